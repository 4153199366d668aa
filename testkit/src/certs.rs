//! Certificates for TLS tests: a private CA made by the test (rcgen), and
//! server certificates it signs, written as PEM files in a directory of the
//! test's own that is removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

/// A CA that exists only for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// PEM files of a server certificate (leaf + its key) and of the CA that signed it.
pub struct CertFiles {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (host names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).expect("server params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `names` and this CA into a fresh directory.
    pub fn files(&self, names: &[&str]) -> CertFiles {
        let dir = std::env::temp_dir().join(format!("duplex-tls-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let files = CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
            dir,
        };
        self.write(&files, names);
        files
    }

    /// Replaces the certificate in `files` with one for `names` from this CA
    /// (each file replaced by a rename, as an operator's deploy would).
    pub fn write(&self, files: &CertFiles, names: &[&str]) {
        let (cert, key) = self.issue(names);
        replace(&files.key, &key);
        replace(&files.cert, &cert);
        replace(&files.ca, &self.pem());
    }
}

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write PEM");
    std::fs::rename(&tmp, path).expect("rename PEM");
}
