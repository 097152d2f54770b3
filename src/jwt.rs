//! Reads the claims of a JWT-shaped access token without verifying it: ShipHero signs its
//! tokens and only ShipHero needs to check the signature; the daemon only wants `exp`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// The claims of `header.payload.signature`; `None` if the token is not JWT-shaped.
pub fn claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `iat` (if present) and `exp`, in seconds since the epoch.
pub fn times(token: &str) -> Option<(Option<u64>, u64)> {
    let v = claims(token)?;
    let num = |k: &str| {
        v.get(k).and_then(|x| {
            x.as_u64().or_else(|| {
                x.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        })
    };
    Some((num("iat"), num("exp")?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_iat_are_read() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"exp":1900000000,"iat":1800000000}"#);
        let t = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        assert_eq!(times(&t), Some((Some(1_800_000_000), 1_900_000_000)));
        assert_eq!(times("not-a-jwt"), None);
        assert_eq!(times("a.b.c.d"), None);
    }
}
