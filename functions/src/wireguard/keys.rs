//! WireGuard keys: Curve25519 keys as base64 text (`wg genkey`, `wg pubkey`), read from files
//! that nobody but their owner may read. A key is never logged, shown, recorded or put in an
//! error message: errors name the file, never its content.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey, StaticSecret};

/// A 32-byte key from its base64 text (44 characters, as `wg` writes it).
pub fn decode(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("is {} bytes, not 32", bytes.len()))
}

pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// A new private key (`netfn wg genkey`), base64: 32 bytes from the kernel's random source,
/// clamped for Curve25519 as `wg genkey` does.
pub fn generate() -> Result<String, String> {
    let mut key = [0u8; 32];
    // SAFETY: getrandom(2) writes at most `key.len()` bytes into `key`.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if usize::try_from(n).ok() != Some(key.len()) {
        return Err(format!(
            "the kernel gave no random bytes: {}",
            std::io::Error::last_os_error()
        ));
    }
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    Ok(encode(&key))
}

/// The public key of a private key given as base64 (`netfn wg pubkey`).
pub fn public_of(private: &str) -> Result<String, String> {
    let secret = StaticSecret::from(decode(private)?);
    Ok(encode(PublicKey::from(&secret).as_bytes()))
}

/// A short one-way fingerprint of a key (16 hex digits of BLAKE2s over a label and the key):
/// what a chain's record keeps to see that a key file's content changed, never the key itself.
pub fn fingerprint(key: &[u8; 32]) -> String {
    use blake2::{Blake2s256, Digest};
    let digest = Blake2s256::new()
        .chain_update(b"netfn key fingerprint\0")
        .chain_update(key)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A peer's preshared key: compared and handed to the device, never shown (its `Debug` says
/// only that there is one). All zeros is WireGuard's "none", so it never holds that.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// `None` for all zeros (how the UAPI and netlink say "no preshared key").
    pub fn new(bytes: [u8; 32]) -> Option<Self> {
        (bytes != [0; 32]).then_some(Self(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

/// The bytes a device is told for an optional preshared key: all zeros for none (which
/// removes one the device had).
pub fn preshared_bytes(key: Option<&PresharedKey>) -> [u8; 32] {
    key.map_or([0; 32], |k| k.0)
}

/// Why a key file was refused. It names the file, never what the file holds.
#[derive(Debug)]
pub enum KeyFileError {
    /// It cannot be read: missing, not readable by this user, a directory, without end…
    Unreadable(PathBuf, io::Error),
    /// Group or others may read it (`mode` is its permission bits).
    Shared(PathBuf, u32),
    /// It does not hold a key (`why` completes a sentence about the file).
    NotAKey(PathBuf, String),
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Unreadable(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            KeyFileError::Shared(path, mode) => write!(
                f,
                "{} can be read by group or others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            KeyFileError::NotAKey(path, why) => write!(
                f,
                "{} {why}: it does not hold a WireGuard key",
                path.display()
            ),
        }
    }
}

impl From<KeyFileError> for String {
    fn from(e: KeyFileError) -> String {
        e.to_string()
    }
}

impl KeyFileError {
    /// What to do, by what went wrong: only a key file that is not there wants a new key (a
    /// key this user may not read is most likely a good one, readable by its owner only).
    pub fn hint(&self) -> &'static str {
        match self {
            KeyFileError::Unreadable(_, e) if e.kind() == io::ErrorKind::NotFound => {
                "make one with `netfn wg genkey > FILE` (umask 077), or `wg genkey`"
            }
            KeyFileError::Unreadable(_, e) if e.kind() == io::ErrorKind::PermissionDenied => {
                "the key is readable by its owner only (as it must be): run validate as that \
                 user (sudo netfn validate …)"
            }
            KeyFileError::Shared(..) => {
                "keys must be readable by their owner only (make new ones with umask 077)"
            }
            KeyFileError::Unreadable(..) | KeyFileError::NotAKey(..) => {
                "a key file holds one base64 32-byte key (44 characters), as `netfn wg genkey` \
                 or `wg genkey` writes it"
            }
        }
    }
}

/// Reads a key file: refused when group or others may read it (as `wg` warns), when it is not
/// a key, or when it cannot be read.
pub fn read_file(path: &Path) -> Result<[u8; 32], KeyFileError> {
    let unreadable = |e| KeyFileError::Unreadable(path.to_path_buf(), e);
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Shared(path.to_path_buf(), mode & 0o777));
    }
    // Bounded: a file without end (/dev/zero) is refused, not read until memory ends.
    let text = netfn_core::spec::read_text(path).map_err(unreadable)?;
    decode(&text).map_err(|why| KeyFileError::NotAKey(path.to_path_buf(), why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_is_derived_as_wg_derives_it() {
        // RFC 7748's Alice: private key (clamped on use), public key.
        let private = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        assert_eq!(
            public_of(private).unwrap(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        let fresh = generate().unwrap();
        assert_eq!(decode(&fresh).unwrap().len(), 32);
        assert!(decode("not a key").is_err());
        assert!(decode("AAAA").unwrap_err().contains("3 bytes"));
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        let dir = std::env::temp_dir().join(format!("netfn-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let key = generate().unwrap();
        std::fs::write(&path, &key).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && !err.contains(&key), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(encode(&read_file(&path).unwrap()), key);
        std::fs::write(&path, "garbage").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(!err.contains("garbage"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_missing_key_file_is_answered_with_a_new_key() {
        let path = || PathBuf::from("/etc/netfn/vpn.key");
        let unreadable = |kind| KeyFileError::Unreadable(path(), io::Error::from(kind));
        assert!(
            unreadable(io::ErrorKind::NotFound)
                .hint()
                .contains("genkey > FILE")
        );
        // A root-owned key of mode 600, read by another user: a good key.
        let denied = unreadable(io::ErrorKind::PermissionDenied).hint();
        assert!(denied.contains("sudo netfn validate") && !denied.contains("genkey"));
        for other in [
            unreadable(io::ErrorKind::IsADirectory),
            KeyFileError::Shared(path(), 0o644),
            KeyFileError::NotAKey(path(), "is not base64".into()),
        ] {
            assert!(!other.hint().contains("genkey > FILE"), "{other}");
        }
    }

    #[test]
    fn a_fingerprint_tells_keys_apart_and_shows_none() {
        let (a, b) = ([7u8; 32], [8u8; 32]);
        assert_eq!(fingerprint(&a), fingerprint(&a));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
        let hex: String = a.iter().map(|x| format!("{x:02x}")).collect();
        assert!(!hex.contains(&fingerprint(&a)) && !fingerprint(&a).contains(&encode(&a)));
    }
}
