//! Google's OIDC tokens, as a Pub/Sub push subscription attaches them: a JWT signed
//! RS256 by one of Google's keys. Verified here with the keys of a JWKS document
//! (`https://www.googleapis.com/oauth2/v3/certs`, kept in a file the operator refreshes):
//! the algorithm must be RS256 (never `none`, never a symmetric one), the key id one of
//! the JWKS's, the signature valid, the issuer Google's, the audience the configured
//! one, the token current (a minute of clock skew), and, when configured, the service
//! account's e-mail verified and equal to it.

use std::path::Path;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Clock skew allowed on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;
const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// One RSA public key of a JWKS.
#[derive(Debug, Clone)]
struct Key {
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

/// The check of a Pub/Sub push's token.
#[derive(Debug, Clone)]
pub struct GoogleOidc {
    keys: Vec<Key>,
    audience: String,
    email: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: String,
    n: String,
    e: String,
    #[serde(default)]
    alg: Option<String>,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

impl GoogleOidc {
    /// Reads the JWKS file; an unreadable file or one without RSA keys is an error
    /// naming it.
    pub fn from_file(path: &Path, audience: &str, email: Option<&str>) -> Result<GoogleOidc> {
        let what = format!("JWKS {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(what.clone(), format!("cannot read it: {e}")))?;
        let jwks: Jwks = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(what.clone(), format!("not a JWKS document: {e}")))?;
        let mut keys = vec![];
        for k in jwks.keys {
            if k.kty != "RSA" || k.alg.as_deref().is_some_and(|a| a != "RS256") {
                continue;
            }
            let (Some(n), Some(e)) = (b64url(&k.n), b64url(&k.e)) else {
                return Err(Error::invalid(
                    what,
                    format!("key {}: n or e is not base64url", k.kid),
                ));
            };
            keys.push(Key { kid: k.kid, n, e });
        }
        if keys.is_empty() {
            return Err(Error::invalid(what, "has no RS256 key"));
        }
        Ok(GoogleOidc::with_keys(keys_as_parts(keys), audience, email))
    }

    /// A check over keys given as (kid, n, e) bytes.
    pub fn with_keys(
        keys: Vec<(String, Vec<u8>, Vec<u8>)>,
        audience: &str,
        email: Option<&str>,
    ) -> GoogleOidc {
        GoogleOidc {
            keys: keys
                .into_iter()
                .map(|(kid, n, e)| Key { kid, n, e })
                .collect(),
            audience: audience.to_string(),
            email: email.map(str::to_string),
        }
    }

    /// Verifies `token` at `now` (Unix seconds); why not, in words for the log.
    pub fn verify(&self, token: &str, now: i64) -> std::result::Result<(), String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT (three dot-separated parts)".into());
        };
        let header: Value = b64url(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the JWT header is not base64url JSON")?;
        if header["alg"] != "RS256" {
            return Err(format!("algorithm {} refused (RS256 only)", header["alg"]));
        }
        let kid = header["kid"].as_str().ok_or("the JWT names no key id")?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| format!("key id {kid:?} is not in the JWKS (refresh it?)"))?;
        let sig = b64url(s).ok_or("the signature is not base64url")?;
        let signed = &token[..h.len() + 1 + p.len()];
        aws_lc_rs::signature::RsaPublicKeyComponents {
            n: key.n.as_slice(),
            e: key.e.as_slice(),
        }
        .verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        )
        .map_err(|_| "the signature does not verify".to_string())?;
        let claims: Value = b64url(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the JWT claims are not base64url JSON")?;
        let iss = claims["iss"].as_str().unwrap_or_default();
        if !ISSUERS.contains(&iss) {
            return Err(format!("issuer {iss:?} is not Google"));
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => *a == self.audience,
            Value::Array(a) => a.iter().any(|x| x == self.audience.as_str()),
            _ => false,
        };
        if !aud_ok {
            return Err(format!(
                "audience {} is not {:?}",
                claims["aud"], self.audience
            ));
        }
        let exp = claims["exp"].as_i64().ok_or("no exp")?;
        if exp.saturating_add(LEEWAY_SECS) < now {
            return Err("the token has expired".into());
        }
        if claims["iat"]
            .as_i64()
            .is_some_and(|iat| iat > now.saturating_add(LEEWAY_SECS))
        {
            return Err("the token is issued in the future".into());
        }
        if let Some(want) = &self.email {
            if claims["email"].as_str() != Some(want.as_str()) {
                return Err(format!("e-mail {} is not {want:?}", claims["email"]));
            }
            if claims["email_verified"] != true {
                return Err("the e-mail is not verified".into());
            }
        }
        Ok(())
    }
}

fn keys_as_parts(keys: Vec<Key>) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    keys.into_iter().map(|k| (k.kid, k.n, k.e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_unsigned_tokens_are_refused_before_any_key() {
        let v = GoogleOidc::with_keys(vec![("k1".into(), vec![1], vec![1, 0, 1])], "aud", None);
        let enc =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = enc(
            &serde_json::json!({"iss": "https://accounts.google.com", "aud": "aud", "exp": 9_999_999_999_i64}),
        );
        for (token, want) in [
            ("abc".to_string(), "three"),
            (
                format!("{}.{claims}.", enc(&serde_json::json!({"alg": "none"}))),
                "refused",
            ),
            (
                format!(
                    "{}.{claims}.x",
                    enc(&serde_json::json!({"alg": "HS256", "kid": "k1"}))
                ),
                "refused",
            ),
            (
                format!(
                    "{}.{claims}.x",
                    enc(&serde_json::json!({"alg": "RS256", "kid": "other"}))
                ),
                "not in the JWKS",
            ),
            (
                format!(
                    "{}.{claims}.AAAA",
                    enc(&serde_json::json!({"alg": "RS256", "kid": "k1"}))
                ),
                "does not verify",
            ),
        ] {
            let e = v.verify(&token, 1_800_000_000).unwrap_err();
            assert!(e.contains(want), "{token}: {e}");
        }
    }
}
