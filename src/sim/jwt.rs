//! JWT-shaped access tokens for the fake ShipHero.
//!
//! Real ShipHero access tokens are JWTs whose `exp` claim the daemon reads for hand-registered
//! tokens, so the fake mints the same shape; nobody verifies the signature, so it is random bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Value, json};

/// Mints `base64url(header).base64url(claims).base64url(signature)` with an HS256 header.
pub fn mint(claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let mut signature = [0u8; 32];
    rand::rng().fill_bytes(&mut signature);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Reads the claims of a JWT without checking its signature; the daemon's own decoder.
pub use crate::jwt::claims;

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn minted_claims_read_back_and_tokens_differ() {
        let a = mint(&json!({"exp": 10, "jti": "a"}));
        let b = mint(&json!({"exp": 10, "jti": "a"}));
        assert_ne!(a, b, "random signatures make every token distinct");
        assert_eq!(a.split('.').count(), 3);
        assert_eq!(claims(&a).and_then(|c| c["exp"].as_u64()), Some(10));
        assert!(claims("not-a-jwt").is_none());
        assert!(claims("a.b.c.d").is_none());
    }
}
