//! Standard Webhooks signing: owns the endpoint secret (`whsec_<base64>`) and the
//! `webhook-signature` value, `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! The dispatcher calls [`SigningSecret::sign`] for each attempt; [`SigningSecret::verify`]
//! exists for the tests' receiver. The scheme is the one the reference `standardwebhooks`
//! libraries verify, so a receiver using them accepts our deliveries unchanged.

use std::fmt;
use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a secret in its textual form.
const PREFIX: &str = "whsec_";

/// Shortest key we accept. The specification says keys SHOULD be 24 to 64 bytes; a
/// shorter key is more likely a typo or a placeholder than a deliberate choice.
pub const MIN_KEY_LEN: usize = 24;

/// Length of the keys [`SigningSecret::generate`] makes (the lower end of the spec's range,
/// as the reference libraries generate).
const GENERATED_KEY_LEN: usize = 24;

/// Standard base64 that accepts the secret with or without `=` padding, as the reference
/// libraries do (the Python one appends `==` before decoding).
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a textual secret was refused. Messages never include the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("webhook secret is empty (expected `whsec_` followed by base64)")]
    Empty,
    #[error("webhook secret is not valid base64 after the `whsec_` prefix: {0}")]
    Base64(String),
    #[error("webhook secret decodes to {0} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort(usize),
}

/// An endpoint's HMAC key. `Debug` is redacted and there is no `Display`, so the key cannot
/// end up in logs by accident; use [`SigningSecret::to_whsec`] where showing it is intended.
/// No `PartialEq` either: comparing keys is not something the daemon needs, and a derived
/// comparison would not be constant-time.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

impl FromStr for SigningSecret {
    type Err = SecretError;

    /// Parses `whsec_<base64>`, or bare base64 as the reference libraries also accept.
    /// Surrounding whitespace (a trailing newline from a secrets file) is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let encoded = s.strip_prefix(PREFIX).unwrap_or(s);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|e| SecretError::Base64(e.to_string()))?;
        if key.len() < MIN_KEY_LEN {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Self { key })
    }
}

impl SigningSecret {
    /// A fresh random secret (24 bytes from the OS-seeded thread RNG, a CSPRNG).
    #[must_use]
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// The textual form, `whsec_<base64>`. This reveals the key: only for showing it to
    /// the operator who owns it (the demo, `generate` output).
    #[must_use]
    pub fn to_whsec(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `webhook-signature` header value for one attempt: `v1,<base64>`.
    #[must_use]
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// True when any `v1` entry of a (space-separated) `webhook-signature` header matches.
    /// Entries of other versions or malformed entries are skipped rather than failing the
    /// whole header, so a sender can add signatures during a key rotation. Comparison is
    /// constant-time. This does not check the timestamp's age: the caller decides that.
    #[must_use]
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
        signature_header: &str,
    ) -> bool {
        signature_header.split_whitespace().any(|entry| {
            let Some(("v1", encoded)) = entry.split_once(',') else {
                return false;
            };
            let Ok(candidate) = STANDARD.decode(encoded) else {
                return false;
            };
            self.mac(msg_id, timestamp, body)
                .verify_slice(&candidate)
                .is_ok()
        })
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SPEC_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SPEC_TS: i64 = 1_649_367_553;
    const SPEC_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SPEC_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn spec_secret() -> SigningSecret {
        SPEC_SECRET.parse().expect("spec secret parses")
    }

    #[test]
    fn signs_the_specification_vector() {
        assert_eq!(spec_secret().sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn verifies_the_specification_vector() {
        let s = spec_secret();
        assert!(s.verify(SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG));
        // Among other entries, including other versions and junk.
        let header = format!("v2,abc v1,bm90IGl0 junk {SPEC_SIG}");
        assert!(s.verify(SPEC_ID, SPEC_TS, SPEC_BODY, &header));
    }

    #[test]
    fn refuses_wrong_secret_body_id_timestamp_or_version() {
        let s = spec_secret();
        let other = SigningSecret::generate();
        assert!(!other.verify(SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG));
        assert!(!s.verify(SPEC_ID, SPEC_TS, b"{\"email\":\"x\"}", SPEC_SIG));
        assert!(!s.verify("msg_other", SPEC_TS, SPEC_BODY, SPEC_SIG));
        assert!(!s.verify(SPEC_ID, SPEC_TS + 1, SPEC_BODY, SPEC_SIG));
        let v2 = SPEC_SIG.replacen("v1,", "v2,", 1);
        assert!(!s.verify(SPEC_ID, SPEC_TS, SPEC_BODY, &v2));
        assert!(!s.verify(SPEC_ID, SPEC_TS, SPEC_BODY, ""));
        assert!(!s.verify(SPEC_ID, SPEC_TS, SPEC_BODY, "v1,"));
        assert!(!s.verify(SPEC_ID, SPEC_TS, SPEC_BODY, "v1,!!!not-base64"));
    }

    #[test]
    fn accepts_bare_base64_unpadded_and_whitespace() {
        let bare: SigningSecret = "C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap();
        assert_eq!(bare.key, spec_secret().key);
        let padded = SigningSecret { key: vec![7; 25] }.to_whsec();
        assert!(padded.ends_with('='));
        let unpadded: SigningSecret = padded.trim_end_matches('=').parse().unwrap();
        assert_eq!(unpadded.key, vec![7; 25]);
        let with_newline: SigningSecret = format!("{SPEC_SECRET}\n").parse().unwrap();
        assert_eq!(with_newline.key, spec_secret().key);
    }

    #[test]
    fn refuses_bad_secrets_with_clear_errors() {
        assert_eq!("".parse::<SigningSecret>().unwrap_err(), SecretError::Empty);
        assert_eq!(
            "whsec_".parse::<SigningSecret>().unwrap_err(),
            SecretError::Empty
        );
        let err = "whsec_not base64!".parse::<SigningSecret>().unwrap_err();
        assert!(matches!(err, SecretError::Base64(_)), "{err:?}");
        assert!(err.to_string().contains("not valid base64"), "{err}");
        // "dGVzdA==" is "test": 4 bytes.
        let err = "whsec_dGVzdA==".parse::<SigningSecret>().unwrap_err();
        assert_eq!(err, SecretError::TooShort(4));
        assert!(err.to_string().contains("at least 24"), "{err}");
    }

    #[test]
    fn generate_round_trips_and_debug_is_redacted() {
        let s = SigningSecret::generate();
        assert_eq!(s.key.len(), GENERATED_KEY_LEN);
        let text = s.to_whsec();
        assert!(text.starts_with("whsec_"));
        assert_eq!(text.parse::<SigningSecret>().unwrap().key, s.key);
        assert_ne!(SigningSecret::generate().key, s.key);
        let debug = format!("{s:?}");
        assert_eq!(debug, "SigningSecret([redacted])");
        assert!(!debug.contains(&text[6..]));
    }
}
