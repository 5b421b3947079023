//! API tokens: `pk_<key id>_<secret>`, the secret 32 random bytes in URL-safe base64. Only
//! the SHA-256 of the secret is stored; a presented secret is hashed and compared in constant
//! time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "pk_";

/// A token as a client presents it, split into its parts.
pub struct Presented<'a> {
    pub id: &'a str,
    secret: Vec<u8>,
}

/// A new key's id, its token (shown once) and the hash stored for it.
pub struct Minted {
    pub id: String,
    pub token: String,
    pub hash: [u8; 32],
}

/// A fresh key id (16 hex digits) and secret.
pub fn mint() -> Result<Minted, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("{PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    Ok(Minted {
        id,
        token,
        hash: hash(&secret),
    })
}

/// Splits a token into its key id and secret; `None` when it is not of the form.
pub fn parse(token: &str) -> Option<Presented<'_>> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let valid_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret = URL_SAFE_NO_PAD.decode(secret).ok()?;
    (valid_id && secret.len() == 32).then_some(Presented { id, secret })
}

pub fn hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Presented<'_> {
    /// Whether the secret hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        hash(&self.secret).ct_eq(stored).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_and_matches_only_its_own_hash() {
        let minted = mint().unwrap();
        assert!(minted.token.starts_with("pk_"));
        let presented = parse(&minted.token).unwrap();
        assert_eq!(presented.id, minted.id);
        assert!(presented.matches(&minted.hash));
        let other = mint().unwrap();
        assert!(!presented.matches(&other.hash));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let minted = mint().unwrap();
        for bad in [
            "",
            "pk_",
            "sk_0123456789abcdef_x",
            "pk_0123456789abcdef_",
            "pk_0123_AAAA",
            &minted.token[..minted.token.len() - 2],
            &format!("{}!", minted.token),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
