//! `duplex cert dev`: a development CA and a certificate it signs for this
//! machine's loopback names, for trying the TLS listeners (never for a
//! reachable node: the CA's key sits next to it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write ca.pem, cert.pem and key.pem for localhost, 127.0.0.1 and ::1 (and --name ...).
    Dev(DevArgs),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "duplex-dev-tls")]
    pub dir: PathBuf,
    /// More host names or addresses the certificate should carry.
    #[arg(long = "name")]
    pub names: Vec<String>,
}

pub fn run(cmd: CertCommand) -> ExitCode {
    let CertCommand::Dev(args) = cmd;
    match write_dev(&args) {
        Ok(()) => {
            eprintln!(
                "wrote {dir}/ca.pem, {dir}/cert.pem and {dir}/key.pem; serve them with\n  \
                 DUPLEX_ACCESS__TLS_LISTEN=127.0.0.1:7443 DUPLEX_ACCESS__TLS__CERT_FILE={dir}/cert.pem \
                 DUPLEX_ACCESS__TLS__KEY_FILE={dir}/key.pem duplex\nand connect with\n  \
                 duplex client --url tls://localhost:7443 --ca-file {dir}/ca.pem --token \"$(duplex token --sub alice)\"",
                dir = args.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("duplex cert dev: {e}");
            ExitCode::from(73)
        }
    }
}

fn write_dev(args: &DevArgs) -> Result<(), String> {
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Duplex development CA");
    let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(args.names.iter().cloned());
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = CertificateParams::new(names)
        .map_err(|e| e.to_string())?
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    write(&args.dir.join("ca.pem"), &ca.pem())?;
    write(&args.dir.join("cert.pem"), &cert.pem())?;
    write(&args.dir.join("key.pem"), &key.serialize_pem())
}

fn write(path: &Path, pem: &str) -> Result<(), String> {
    std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))
}
