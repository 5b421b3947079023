//! The engine's pool of instance slots, and the permits that keep it from running out.
//!
//! Every batch runs in a fresh instance. With wasmtime's default allocator each instance
//! maps its linear memory anew and unmaps it when the batch ends: the unmap flushes the TLBs
//! of every core the process runs on, and the next instance faults every page it touches in
//! again (for a JavaScript or Python guest, megabytes of interpreter heap per batch). The
//! pooling allocator keeps a fixed set of slots instead; a slot's memory is reset in place
//! when its instance ends, by copying the image back into the pages the instance wrote (up to
//! [`KEEP_RESIDENT`] bytes of them; the rest is given back), so the next batch of the same
//! projection finds its pages mapped. Which pages were written, Linux 6.7 and later tell
//! (`PAGEMAP_SCAN`); on an older kernel the first [`KEEP_RESIDENT`] bytes are reset whether
//! written or not, which costs a small batch more than its events.
//!
//! The pool has a fixed size, and an instantiation that finds it full fails. So that a busy
//! moment never fails a guest, every store holds a [`Permit`] from [`Slots`] for as long as it
//! lives; there are as many permits as the pool has component instances, and each component
//! is held to the per-component caps below, so a holder of a permit always finds its slots.

use parking_lot::{Condvar, Mutex};
use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Guest instances alive at once: each projection worker holds one while it applies a batch,
/// a load one while it asks the guest for its subscription. More wait for a permit.
pub const INSTANCES: u32 = 32;

/// What one component may use of the pool. A component over these fails to load, with
/// wasmtime's reason. Generous for what the toolchains make: a Rust component has one or two
/// core instances and one memory; componentize-js and componentize-py a handful of each.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;
const TABLE_ELEMENTS: usize = 1 << 20;

/// Bytes of each linear memory reset in place rather than given back to the kernel. With
/// `PAGEMAP_SCAN`, only pages an instance wrote are copied back, so a slot costs resident
/// memory in proportion to what its guest touches, not this figure.
pub const KEEP_RESIDENT: usize = 4 << 20;

/// The pooling allocator's settings.
pub fn strategy() -> InstanceAllocationStrategy {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(INSTANCES)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(INSTANCES * CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_memories_per_module(MEMORIES_PER_COMPONENT)
        .total_memories(INSTANCES * MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_tables_per_module(TABLES_PER_COMPONENT)
        .total_tables(INSTANCES * TABLES_PER_COMPONENT)
        .table_elements(TABLE_ELEMENTS)
        .total_stacks(0)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(1 << 20)
        // Reset only the pages an instance wrote (found by Linux's `PAGEMAP_SCAN`, kernel 6.7
        // and later), not the first `KEEP_RESIDENT` bytes whether written or not.
        .pagemap_scan(Enabled::Auto);
    InstanceAllocationStrategy::Pooling(pool)
}

/// Permits for the pool's component instances.
pub struct Slots {
    /// Guards the count of permits not handed out; taken alone, never across a call into a
    /// guest. Waiters park on `freed`.
    free: Mutex<u32>,
    freed: Condvar,
}

impl Slots {
    pub fn new() -> Self {
        Slots {
            free: Mutex::new(INSTANCES),
            freed: Condvar::new(),
        }
    }

    /// A permit, waiting for one if all are out. Blocking: never call on the reactor.
    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.freed.wait(&mut free);
        }
        *free -= 1;
        Permit(self)
    }
}

/// One instance's claim on the pool; given back when dropped, which must be after its store.
pub struct Permit<'a>(&'a Slots);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn no_more_permits_are_out_at_once_than_the_pool_has_instances() {
        let slots = Arc::new(Slots::new());
        let (out, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        std::thread::scope(|scope| {
            for _ in 0..(INSTANCES * 2) {
                let (slots, out, most) = (slots.clone(), out.clone(), most.clone());
                scope.spawn(move || {
                    for _ in 0..50 {
                        let _permit = slots.acquire();
                        let now = out.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        out.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= INSTANCES);
        assert_eq!(*slots.free.lock(), INSTANCES);
    }
}
