//! Password hashes for the users of orchardd's own MQTT endpoint (`broker.users`).
//!
//! Every MQTT CONNECT that carries a username is checked against that user's hash, so a
//! device only gets in with the password it was given. The hashes are in the formats that
//! Mosquitto's `mosquitto_passwd` writes, so operators can make them with the tool they
//! already know and move users between a Mosquitto password file and orchardd by copying
//! the part after `username:`:
//!
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 of the password,
//!   64 bytes. `mosquitto_passwd`'s default since Mosquitto 2.0, and what [`PasswordHash::create`]
//!   makes.
//! - `$6$<base64 salt>$<base64 hash>`: one SHA-512 of the password followed by the salt.
//!   Mosquitto 1.6 and earlier wrote these (`mosquitto_passwd -H sha512` still does); they are
//!   read so that old password files keep working, never written: one SHA-512 is cheap to
//!   brute-force.
//!
//! As in Mosquitto (`src/security_default.c` in 2.0, `libcommon/password_common.c` in 2.1),
//! base64 is the standard alphabet with `=` padding, the salt is 12 bytes (2.0) or 64 bytes
//! (2.1 and later) and the hash is 64 bytes. `$argon2id$` hashes, which Mosquitto 2.1 can
//! write when built with libargon2, are refused with a message saying how to make a `$7$` one.
//!
//! A hash is parsed once, when the configuration is loaded ([`PasswordHash::parse`], or serde
//! through [`FromStr`]), so a malformed one is reported by its config key at startup rather
//! than as a refused CONNECT later. Verification is plain CPU work of a few milliseconds (see
//! [`DEFAULT_ITERATIONS`]): run it on a blocking thread, not on the async executor.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use ring::rand::SecureRandom as _;
use ring::{digest, pbkdf2};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq as _;

/// Iterations of PBKDF2-HMAC-SHA512 for a new hash when the operator does not choose.
///
/// Mosquitto's `mosquitto_passwd` uses 101 (2.0) or 1 000 (2.1); 4 000 makes each guess
/// against a stolen config 40 or 4 times dearer. More would cost too much on our side: a hash
/// is verified on every CONNECT, and after a power cut all devices reconnect at once.
/// Measured in a release build on the 2-core development VM (Intel Xeon, x86-64, ring 0.17.14;
/// best of 5 timed loops of 500 verifications, repeated 5 times, other builds loading the
/// machine): one verification takes 2.2 to 3.1 ms at 4 000 iterations (0.54 to 0.73 ms at
/// 1 000, 5.4 to 9.4 ms at 10 000).
/// 10 000 sensors reconnecting therefore cost 22 to 31 s of one core, half that over both; at
/// 10 000 iterations it would be 55 to 95 s of one core. Device passwords should be long
/// random strings anyway, against which the iteration count barely matters; operators who
/// have people's passwords in `broker.users` can choose more with [`PasswordHash::create`]
/// or `mosquitto_passwd -I`.
pub const DEFAULT_ITERATIONS: NonZeroU32 = NonZeroU32::new(4_000).unwrap();

/// The largest iteration count accepted: Mosquitto reads the count with `atoi` into a C `int`.
pub const MAX_ITERATIONS: u32 = i32::MAX as u32;

/// Bytes of random salt in a new hash, as `mosquitto_passwd` 2.0 writes (2.1 writes 64; both
/// are read).
pub const SALT_LEN: usize = 12;

/// Bytes of the stored hash: one SHA-512 output, for both formats.
pub const HASH_LEN: usize = 64;

const FORMATS: &str = "`$7$<iterations>$<base64 salt>$<base64 hash>` (sha512-pbkdf2) or \
                       `$6$<base64 salt>$<base64 hash>` (sha512), as written by mosquitto_passwd";
const FORMAT_7: &str = "$7$<iterations>$<base64 salt>$<base64 hash>";
const FORMAT_6: &str = "$6$<base64 salt>$<base64 hash>";

/// Standard alphabet; `=` padding written, and accepted whether present or not.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a [`PasswordHash`] was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations.
    Pbkdf2Sha512 { iterations: NonZeroU32 },
    /// `$6$`: SHA-512 of the password followed by the salt (legacy, read only).
    Sha512,
}

/// A parsed `mosquitto_passwd` hash. [`fmt::Display`] (and serde) give it back in the same
/// format; [`fmt::Debug`] leaves out the salt and hash so that logging a configuration does
/// not hand out material for offline guessing.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    scheme: Scheme,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

/// Why a string is not a usable password hash. The messages say what is wrong and which
/// format is expected, and are written to follow a config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseHashError {
    #[error("the password hash is empty; expected {FORMATS}")]
    Empty,
    #[error(
        "this looks like a whole line of a mosquitto password file (`<username>:<hash>`); \
         give only the hash after the first `:`"
    )]
    PasswordFileLine,
    #[error(
        "a password hash starts with `$`, this does not (plain-text passwords are not \
         accepted: make a hash with `mosquitto_passwd`); expected {FORMATS}"
    )]
    NotAHash,
    #[error(
        "`$argon2id$` hashes are not supported; make a `$7$` hash instead, with \
         `mosquitto_passwd -H sha512-pbkdf2 -c <new file> <username>`: `{FORMAT_7}`"
    )]
    Argon2,
    #[error("hash type `${0}$` is not supported; expected {FORMATS}")]
    UnknownScheme(String),
    #[error(
        "a `${scheme}$` hash has {expected} `$`-separated fields after `${scheme}$`, this one \
         has {found}; expected `{format}`"
    )]
    Fields {
        scheme: char,
        expected: usize,
        found: usize,
        format: &'static str,
    },
    #[error(
        "the iteration count `{0}` is not a whole number from 1 to 2147483647; \
         expected `{FORMAT_7}`"
    )]
    Iterations(String),
    #[error("the {field} is not valid base64 ({reason}); expected `{format}`")]
    Base64 {
        field: &'static str,
        reason: String,
        format: &'static str,
    },
    #[error(
        "the salt is {0} bytes, expected 12 (mosquitto_passwd 2.0) or 64 (mosquitto_passwd 2.1)"
    )]
    SaltLength(usize),
    #[error("the hash is {0} bytes, expected 64 (one SHA-512 output)")]
    HashLength(usize),
}

/// Why [`PasswordHash::create`] made no hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("the iteration count {0} is not from 1 to 2147483647")]
    Iterations(u32),
    #[error("the operating system's random number generator failed")]
    Random,
}

impl PasswordHash {
    /// Parses a hash as `mosquitto_passwd` writes it (the part after `username:`).
    /// Surrounding whitespace is ignored, as Mosquitto does in its password file.
    pub fn parse(s: &str) -> Result<Self, ParseHashError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseHashError::Empty);
        }
        let Some(rest) = s.strip_prefix('$') else {
            return Err(match s.split_once(':') {
                Some((_, hash)) if hash.trim_start().starts_with('$') => {
                    ParseHashError::PasswordFileLine
                }
                _ => ParseHashError::NotAHash,
            });
        };
        let fields: Vec<&str> = rest.split('$').collect();
        match fields[0] {
            "7" => {
                let [_, iterations, salt, hash] = fields[..] else {
                    return Err(ParseHashError::Fields {
                        scheme: '7',
                        expected: 3,
                        found: fields.len() - 1,
                        format: FORMAT_7,
                    });
                };
                let iterations = parse_iterations(iterations)
                    .ok_or_else(|| ParseHashError::Iterations(shorten(iterations)))?;
                let (salt, hash) = decode_salt_and_hash(salt, hash, FORMAT_7)?;
                Ok(Self {
                    scheme: Scheme::Pbkdf2Sha512 { iterations },
                    salt,
                    hash,
                })
            }
            "6" => {
                let [_, salt, hash] = fields[..] else {
                    return Err(ParseHashError::Fields {
                        scheme: '6',
                        expected: 2,
                        found: fields.len() - 1,
                        format: FORMAT_6,
                    });
                };
                let (salt, hash) = decode_salt_and_hash(salt, hash, FORMAT_6)?;
                Ok(Self {
                    scheme: Scheme::Sha512,
                    salt,
                    hash,
                })
            }
            t if t.starts_with("argon2") => Err(ParseHashError::Argon2),
            t => Err(ParseHashError::UnknownScheme(shorten(t))),
        }
    }

    /// A new `$7$` hash of `password` with a fresh random [`SALT_LEN`]-byte salt.
    pub fn create(password: impl AsRef<[u8]>, iterations: u32) -> Result<Self, CreateError> {
        let iterations = NonZeroU32::new(iterations)
            .filter(|n| n.get() <= MAX_ITERATIONS)
            .ok_or(CreateError::Iterations(iterations))?;
        let mut salt = vec![0; SALT_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| CreateError::Random)?;
        let scheme = Scheme::Pbkdf2Sha512 { iterations };
        let hash = compute(scheme, &salt, password.as_ref());
        Ok(Self { scheme, salt, hash })
    }

    /// [`PasswordHash::create`] with [`DEFAULT_ITERATIONS`].
    pub fn create_default(password: impl AsRef<[u8]>) -> Result<Self, CreateError> {
        Self::create(password, DEFAULT_ITERATIONS.get())
    }

    /// Whether `password` is the one this hash was made from. The hashes are compared in
    /// constant time (`subtle`), so the time taken depends on the scheme, the iteration count
    /// and the password's length, never on how many bytes of the hash a guess got right.
    ///
    /// The password is taken as bytes, as an MQTT CONNECT carries it. Mosquitto treats it
    /// as a C string and so ignores everything from a NUL byte on; orchardd does not, so
    /// `secret\0junk` does not match a hash of `secret`. One equivalence remains, from HMAC
    /// itself rather than from this code: HMAC pads a key shorter than its 128-byte block with
    /// zeros, so for `$7$` a password and the same password followed by NUL bytes are one key.
    pub fn verify(&self, password: impl AsRef<[u8]>) -> bool {
        let computed = compute(self.scheme, &self.salt, password.as_ref());
        computed.ct_eq(&self.hash).into()
    }

    /// Which of the two formats this is, with its iteration count for `$7$`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The PBKDF2 iteration count, `None` for a `$6$` hash.
    pub fn iterations(&self) -> Option<NonZeroU32> {
        match self.scheme {
            Scheme::Pbkdf2Sha512 { iterations } => Some(iterations),
            Scheme::Sha512 => None,
        }
    }
}

fn compute(scheme: Scheme, salt: &[u8], password: &[u8]) -> [u8; HASH_LEN] {
    let mut out = [0; HASH_LEN];
    match scheme {
        Scheme::Pbkdf2Sha512 { iterations } => {
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA512,
                iterations,
                salt,
                password,
                &mut out,
            );
        }
        Scheme::Sha512 => {
            let mut ctx = digest::Context::new(&digest::SHA512);
            ctx.update(password);
            ctx.update(salt);
            out.copy_from_slice(ctx.finish().as_ref());
        }
    }
    out
}

/// Digits only (no sign, no spaces), 1 to [`MAX_ITERATIONS`].
fn parse_iterations(s: &str) -> Option<NonZeroU32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>()
        .ok()
        .filter(|&n| n <= MAX_ITERATIONS)
        .and_then(NonZeroU32::new)
}

fn decode_salt_and_hash(
    salt: &str,
    hash: &str,
    format: &'static str,
) -> Result<(Vec<u8>, [u8; HASH_LEN]), ParseHashError> {
    let decode = |field, text: &str| {
        B64.decode(text).map_err(|e| ParseHashError::Base64 {
            field,
            reason: e.to_string(),
            format,
        })
    };
    let salt = decode("salt", salt)?;
    if salt.len() != 12 && salt.len() != 64 {
        return Err(ParseHashError::SaltLength(salt.len()));
    }
    let hash = decode("hash", hash)?;
    let hash = <[u8; HASH_LEN]>::try_from(hash.as_slice())
        .map_err(|_| ParseHashError::HashLength(hash.len()))?;
    Ok((salt, hash))
}

/// A piece of the offending text for an error message, never more than 20 characters.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(20) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

impl FromStr for PasswordHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let salt = B64.encode(&self.salt);
        let hash = B64.encode(self.hash);
        match self.scheme {
            Scheme::Pbkdf2Sha512 { iterations } => write!(f, "$7${iterations}${salt}${hash}"),
            Scheme::Sha512 => write!(f, "$6${salt}${hash}"),
        }
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("scheme", &self.scheme)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl Serialize for PasswordHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python:
    /// `hashlib.pbkdf2_hmac("sha512", b"correct horse", b"orchardd-kat", 101, 64)`, and
    /// `hashlib.sha512(b"correct horse" + b"orchardd-kat")`, base64 with `base64.b64encode`.
    const KAT_7_101: &str = "$7$101$b3JjaGFyZGQta2F0$hu8LfGsJ5rWRCCxU7g0zSURHuO/03jwGyGChaH7\
                             LbyzX/QbQp5YavZYjubssPJnZOg7LWf+Y2PvP4s8dtpcbOA==";
    const KAT_6: &str = "$6$b3JjaGFyZGQta2F0$qPpQ1b6WoXlPORG/+q7O+ZM8vwhjvvr4BLEabo8wlE+nwhxct\
                         7FVHIxRStOivJLtw8saKLLACFR2KMxWOoXayw==";
    /// The same in Python with the 64-byte salt `bytes(range(64))` of Mosquitto 2.1's length.
    const KAT_7_SALT64: &str = "$7$1000$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJ\
                                ygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==$53KiEygVzVVEVUVTe4h79yMtYp0\
                                OxxoKFip82vf7OCrEbcm4/E88oGkCyN0NhQ7fLOSBIpiITuELG/0ldDPFMQ==";
    /// Written by Debian 12's `mosquitto_passwd` 2.0.11 for the password `secret`
    /// (`-b -c`, and `-H sha512 -b -c`), kept so the format is pinned without the binary.
    const DEBIAN_7: &str = "$7$101$0RhgtgOOOJ+M5GM2$gGiRaPAAXq6/i38/Z5xbdjhVVk/uIV8Re2yel/DBdQ\
                            1YQ39tfIq33paSGcByQnIf47Jn6x7qu8V69e9NdvCdFg==";
    const DEBIAN_6: &str = "$6$HKtVsAxm9lsXBxmX$cY2rA476KknUBVq9s/jkKXFFSVmsSZBrTDxuSucGdGh7YOB\
                            zjmmQgh+d3T9K2cKkxkoQfjLtwnUzFOkvQUcHMQ==";

    fn parse(s: &str) -> PasswordHash {
        PasswordHash::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn known_answer_vectors_verify_and_print_back_unchanged() {
        for (text, password) in [
            (KAT_7_101, "correct horse"),
            (KAT_6, "correct horse"),
            (KAT_7_SALT64, "correct horse"),
            (DEBIAN_7, "secret"),
            (DEBIAN_6, "secret"),
        ] {
            let h = parse(text);
            assert!(h.verify(password), "{text}");
            assert!(!h.verify("Correct horse"), "{text}");
            assert_eq!(h.to_string(), text);
        }
        assert_eq!(
            parse(KAT_7_101).iterations(),
            Some(NonZeroU32::new(101).unwrap())
        );
        assert_eq!(parse(KAT_6).scheme(), Scheme::Sha512);
        assert_eq!(parse(KAT_6).iterations(), None);
    }

    #[test]
    fn round_trip_through_text_and_serde() {
        let h = PasswordHash::create("s3nsor-7f2a", 1000).unwrap();
        assert!(h.verify("s3nsor-7f2a"));
        assert!(h.verify(b"s3nsor-7f2a"));
        let text = h.to_string();
        assert!(text.starts_with("$7$1000$"), "{text}");
        let back = parse(&text);
        assert_eq!(back, h);
        assert!(back.verify("s3nsor-7f2a"));
        assert_eq!(h.salt.len(), SALT_LEN);

        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<PasswordHash>(&json).unwrap(), h);

        let d = PasswordHash::create_default("x").unwrap();
        assert_eq!(d.iterations(), Some(DEFAULT_ITERATIONS));
        assert!(d.verify("x"));
    }

    #[test]
    fn each_hash_gets_its_own_salt() {
        let a = PasswordHash::create("same", 1).unwrap();
        let b = PasswordHash::create("same", 1).unwrap();
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn wrong_passwords_fail() {
        let h = PasswordHash::create("secret", 50).unwrap();
        for wrong in [
            "",
            "Secret",
            "secre",
            "secret ",
            "secretsecret",
            "secret\0x",
        ] {
            assert!(!h.verify(wrong), "{wrong:?}");
        }
        // HMAC zero-pads short keys: trailing NULs are the same PBKDF2 password (documented
        // on `verify`). Pinned so that a change of behaviour is noticed.
        assert!(h.verify("secret\0"));
        // A $6$ hash is SHA-512(password ‖ salt): moving bytes between the two must not help.
        let h6 = parse(KAT_6);
        assert!(!h6.verify("correct horseorchardd-kat"));
        assert!(!h6.verify(""));
    }

    #[test]
    fn create_refuses_iteration_counts_mosquitto_cannot_read() {
        assert_eq!(
            PasswordHash::create("x", 0).unwrap_err(),
            CreateError::Iterations(0)
        );
        assert_eq!(
            PasswordHash::create("x", 1 << 31).unwrap_err(),
            CreateError::Iterations(1 << 31)
        );
    }

    #[test]
    fn surrounding_whitespace_and_missing_padding_are_accepted() {
        assert_eq!(parse(&format!("  {DEBIAN_7}\n")), parse(DEBIAN_7));
        assert_eq!(parse(DEBIAN_7.trim_end_matches('=')), parse(DEBIAN_7));
    }

    #[test]
    fn malformed_hashes_say_what_is_wrong() {
        use ParseHashError as E;
        let salt = "b3JjaGFyZGQta2F0";
        let hash = DEBIAN_7.rsplit('$').next().unwrap();
        let cases: Vec<(String, E)> = vec![
            ("".into(), E::Empty),
            ("   ".into(), E::Empty),
            ("hunter2".into(), E::NotAHash),
            (format!("sensor-1:{DEBIAN_7}"), E::PasswordFileLine),
            (
                "$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA".into(),
                E::Argon2,
            ),
            (format!("$5${salt}${hash}"), E::UnknownScheme("5".into())),
            ("$".into(), E::UnknownScheme("".into())),
            (
                format!("$7${salt}${hash}"),
                E::Fields {
                    scheme: '7',
                    expected: 3,
                    found: 2,
                    format: FORMAT_7,
                },
            ),
            (
                format!("$6$101${salt}${hash}"),
                E::Fields {
                    scheme: '6',
                    expected: 2,
                    found: 3,
                    format: FORMAT_6,
                },
            ),
            (format!("$7$0${salt}${hash}"), E::Iterations("0".into())),
            (format!("$7$-5${salt}${hash}"), E::Iterations("-5".into())),
            (format!("$7$+5${salt}${hash}"), E::Iterations("+5".into())),
            (
                format!("$7$2147483648${salt}${hash}"),
                E::Iterations("2147483648".into()),
            ),
            (format!("$7$$${hash}"), E::Iterations("".into())),
            (format!("$7$101$c2FsdA${hash}"), E::SaltLength(4)),
            (format!("$7$101${salt}$aGFzaA=="), E::HashLength(4)),
        ];
        for (text, want) in cases {
            assert_eq!(PasswordHash::parse(&text).unwrap_err(), want, "{text}");
        }
        let err = PasswordHash::parse(&format!("$7$101$not*base64${hash}")).unwrap_err();
        assert!(matches!(err, E::Base64 { field: "salt", .. }), "{err:?}");
        let err = PasswordHash::parse(&format!("$6${salt}$%%%%")).unwrap_err();
        assert!(
            matches!(
                err,
                E::Base64 {
                    field: "hash",
                    format: FORMAT_6,
                    ..
                }
            ),
            "{err:?}"
        );
        // A long unknown type is cut short in the message rather than echoed whole.
        let err = PasswordHash::parse(&format!("${}$x", "y".repeat(200))).unwrap_err();
        assert_eq!(err, E::UnknownScheme(format!("{}…", "y".repeat(20))));
    }

    #[test]
    fn error_messages_name_the_expected_format() {
        let msg = |s: &str| PasswordHash::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("hunter2"),
            "a password hash starts with `$`, this does not (plain-text passwords are not \
             accepted: make a hash with `mosquitto_passwd`); expected \
             `$7$<iterations>$<base64 salt>$<base64 hash>` (sha512-pbkdf2) or \
             `$6$<base64 salt>$<base64 hash>` (sha512), as written by mosquitto_passwd"
        );
        assert_eq!(
            msg("$7$abc$x$y"),
            "the iteration count `abc` is not a whole number from 1 to 2147483647; \
             expected `$7$<iterations>$<base64 salt>$<base64 hash>`"
        );
        assert_eq!(
            msg("$7$101$b3JjaGFyZGQta2F0"),
            "a `$7$` hash has 3 `$`-separated fields after `$7$`, this one has 2; \
             expected `$7$<iterations>$<base64 salt>$<base64 hash>`"
        );
        assert_eq!(
            msg("$6$b3JjaGFyZGQta2F0$aGFzaA=="),
            "the hash is 4 bytes, expected 64 (one SHA-512 output)"
        );
        assert!(msg("$6$b3Jj*GFyZGQta2F0$aGFzaA==").starts_with("the salt is not valid base64 ("));
    }

    #[test]
    fn serde_reports_a_malformed_hash_by_its_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct User {
            name: String,
            password_hash: PasswordHash,
        }
        let json = r#"{"name": "sensor-1", "password_hash": "$7$101$abc"}"#;
        let err = serde_path_to_error::deserialize::<_, User>(
            &mut serde_json::Deserializer::from_str(json),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "password_hash");
        assert!(
            err.inner()
                .to_string()
                .contains("expected `$7$<iterations>"),
            "{err}"
        );
    }

    #[test]
    fn debug_leaves_out_salt_and_hash() {
        let h = parse(DEBIAN_7);
        let shown = format!("{h:?}");
        assert_eq!(
            shown,
            "PasswordHash { scheme: Pbkdf2Sha512 { iterations: 101 }, salt_len: 12, .. }"
        );
    }

    /// Hashes written by the real `mosquitto_passwd` of this machine must verify. The test
    /// fails, rather than skips, when the tool is missing: it is what pins the format.
    #[test]
    fn hashes_from_the_real_mosquitto_passwd_verify() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        for args in [
            &[][..],
            &["-H", "sha512-pbkdf2", "-I", "3000"],
            &["-H", "sha512"],
        ] {
            let output = std::process::Command::new("mosquitto_passwd")
                .args(args)
                .args(["-b", "-c"])
                .arg(&file)
                .args(["user", "secret"])
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run mosquitto_passwd ({e}); install it with \
                         `apt-get install mosquitto` (after `apt-get update`)"
                    )
                });
            assert!(
                output.status.success(),
                "mosquitto_passwd {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let written = std::fs::read_to_string(&file).unwrap();
            let line = written.lines().next().expect("an empty password file");
            let (user, text) = line.split_once(':').expect("no `:` in the line");
            assert_eq!(user, "user");
            let h = parse(text);
            match args {
                [] => assert!(text.starts_with("$7$"), "{text}"),
                [_, _, _, n] => assert_eq!(h.iterations().unwrap().to_string(), *n),
                _ => assert_eq!(h.scheme(), Scheme::Sha512),
            }
            assert!(h.verify("secret"), "{args:?}: {text}");
            assert!(!h.verify("Secret"), "{args:?}: {text}");
            assert_eq!(h.to_string(), text);
        }
    }
}
