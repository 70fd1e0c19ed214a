//! Test certificates made by `openssl` (the Debian package): a CA, and a serving
//! certificate it signs for loopback names.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl` in `dir`, asserting success.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl) makes the test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PEM files of a CA and of a server certificate it signed.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A P-256 CA `<name>-ca` and a serving certificate for `sans` (`IP:127.0.0.1,DNS:…`)
/// it signs, valid for two days, in `dir`.
pub fn server_cert(dir: &Path, name: &str, sans: &str) -> ServerCert {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
    ];
    let (ca, ca_key) = (format!("{name}-ca.crt"), format!("{name}-ca.key"));
    let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
    let subject = format!("/CN={name}-ca");
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-subj", &subject, "-keyout", &ca_key, "-out", &ca],
        ]
        .concat(),
    );
    let san = format!("subjectAltName={sans}");
    let cn = format!("/CN={name}");
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-subj", &cn, "-addext", &san],
            &["-addext", "basicConstraints=critical,CA:FALSE"],
            &["-addext", "extendedKeyUsage=serverAuth"],
            &[
                "-CA", &ca, "-CAkey", &ca_key, "-keyout", &key, "-out", &cert,
            ],
        ]
        .concat(),
    );
    ServerCert {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}
