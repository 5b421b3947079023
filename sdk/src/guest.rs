//! The component side of the contract: the bindings generated from `wit/`, and the adapter
//! that turns a [`Projection`] into the world's exports. Only built for `wasm32`.

use std::marker::PhantomData;

use crate::{Backend, Projection, View, frame};

pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "projection",
        pub_export_macro: true,
        default_bindings_module: "projector_sdk::guest::bindings",
    });
}

use bindings::projector::projection::{types, view};

// A guest allocates and frees a few small strings and boxes per event, and the standard
// library's dlmalloc made up about a sixth of `order-summary`'s time per event; talc cut that
// time per event by about 12% (see BENCHMARKS.md). Every instance lives for one batch, so
// the allocator's long-run fragmentation never matters.
#[cfg(feature = "allocator")]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// Implements the world's exports for `P`; named by [`crate::export!`].
pub struct Adapter<P>(PhantomData<P>);

impl<P: Projection> bindings::Guest for Adapter<P> {
    fn subscription() -> types::Subscription {
        let s = P::subscription();
        types::Subscription {
            streams: s.streams,
            categories: s.categories,
            event_types: s.event_types,
        }
    }

    fn apply(batch: Vec<u8>) -> Result<(), String> {
        let mut host = HostView;
        let mut view = View::new(&mut host);
        for event in frame::decode(&batch) {
            let event = event.map_err(|e| e.to_string())?;
            P::apply(&mut view, &event).map_err(|e| e.to_string())?;
        }
        view.flush().map_err(|e| e.to_string())
    }
}

/// The host's view, through the `view` imports.
struct HostView;

impl Backend for HostView {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        view::get(key)
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        view::put(key, value)
    }
    fn delete(&mut self, key: &str) {
        view::delete(key)
    }
}
