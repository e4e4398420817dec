//! `paxoskv-server gen-certs`: one CA, a certificate per replica and a client certificate, so
//! that trying TLS takes two commands. Replica I's certificate names `replica-I.paxoskv` (its
//! identity, checked by the peers) and its host (what clients verify when they dial it).

use paxoskv_service::tls::{replica_cert_name, CLIENT_CERT_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replicas of the default cluster.
pub const DEFAULT_REPLICAS: u32 = 5;
/// Most replicas a `gen-certs` run writes certificates for.
pub const MAX_REPLICAS: u32 = 64;

/// Arguments of `paxoskv-server gen-certs`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenCertsArgs {
    /// Directory to write ca.pem, ca-key.pem, replica-I.pem, replica-I-key.pem, client.pem
    /// and client-key.pem into (created if missing; existing certificates are not replaced).
    #[arg(long)]
    pub dir: PathBuf,
    /// The replicas' hosts (names or IPs), comma separated, in replica-id order; one host
    /// serves for all. 127.0.0.1 and localhost are always added.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub hosts: Vec<String>,
    /// Replicas in the cluster.
    #[arg(long, default_value_t = DEFAULT_REPLICAS)]
    pub replicas: u32,
    /// DNS name in the client certificate.
    #[arg(long, default_value = CLIENT_CERT_NAME)]
    pub client_name: String,
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The arguments do not describe a cluster.
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused a name or failed to sign.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A host as given, without a `:port` suffix (`h:15000` and `[::1]:15000` are accepted too).
fn bare_host(host: &str) -> String {
    if let Ok(addr) = host.parse::<std::net::SocketAddr>() {
        return addr.ip().to_string();
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.parse::<u16>().is_ok() => h.to_string(),
        _ => host.trim_matches(|c| c == '[' || c == ']').to_string(),
    }
}

/// Writes the whole set; returns the files written.
pub fn generate(args: &GenCertsArgs) -> Result<Vec<PathBuf>, CertsError> {
    let hosts = replica_hosts(args)?;
    let ca_path = args.dir.join("ca.pem");
    if ca_path.exists() {
        return Err(CertsError::Invalid(format!(
            "{} already exists; remove the directory's certificates or choose another --dir",
            ca_path.display()
        )));
    }
    std::fs::create_dir_all(&args.dir).map_err(|source| CertsError::Write {
        path: args.dir.clone(),
        source,
    })?;
    let (ca_pem, ca_key, issuer) = new_ca()?;
    let mut written = vec![
        write_file(&ca_path, &ca_pem, false)?,
        write_file(&args.dir.join("ca-key.pem"), &ca_key, true)?,
    ];
    for (id, host) in hosts.iter().enumerate() {
        let mut names = vec![replica_cert_name(id as u32), host.clone()];
        names.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        names.dedup();
        let (cert, key) = new_leaf(&issuer, names, &format!("paxoskv replica {id}"))?;
        written.push(write_file(
            &args.dir.join(format!("replica-{id}.pem")),
            &cert,
            false,
        )?);
        written.push(write_file(
            &args.dir.join(format!("replica-{id}-key.pem")),
            &key,
            true,
        )?);
    }
    let (cert, key) = new_leaf(&issuer, vec![args.client_name.clone()], "paxoskv client")?;
    written.push(write_file(&args.dir.join("client.pem"), &cert, false)?);
    written.push(write_file(&args.dir.join("client-key.pem"), &key, true)?);
    Ok(written)
}

fn replica_hosts(args: &GenCertsArgs) -> Result<Vec<String>, CertsError> {
    if args.replicas == 0 || args.replicas > MAX_REPLICAS {
        return Err(CertsError::Invalid(format!(
            "--replicas {} is not between 1 and {MAX_REPLICAS}",
            args.replicas
        )));
    }
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|h| bare_host(h.trim()))
        .filter(|h| !h.is_empty())
        .collect();
    match hosts.len() {
        1 => Ok(vec![hosts[0].clone(); args.replicas as usize]),
        n if n == args.replicas as usize => Ok(hosts),
        n => Err(CertsError::Invalid(format!(
            "--hosts names {n} hosts for {} replicas: give one host for all, or one per replica",
            args.replicas
        ))),
    }
}

fn new_ca() -> Result<(String, String, Issuer<'static, KeyPair>), CertsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A name of its own: certificates are matched to their issuer by name first, so a
    // second `gen-certs` CA named alike would be reported as a bad signature instead of
    // the clearer "unknown issuer".
    let tag: u32 = rand::random();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("paxoskv CA {tag:08x}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_pem = key.serialize_pem();
    Ok((cert.pem(), key_pem, Issuer::new(params, key)))
}

/// A certificate for `names` usable both to serve and to dial (replicas do both).
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: Vec<String>,
    common_name: &str,
) -> Result<(String, String), CertsError> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `text` to `path`; private keys are created readable by the owner only (0600).
fn write_file(path: &Path, text: &str, private: bool) -> Result<PathBuf, CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
    result.map_err(|source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn args(dir: &Path, hosts: &[&str]) -> GenCertsArgs {
        GenCertsArgs {
            dir: dir.to_path_buf(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            replicas: 3,
            client_name: CLIENT_CERT_NAME.into(),
        }
    }

    #[test]
    fn writes_the_layout_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(&args(dir.path(), &["10.0.0.1:15000"])).unwrap();
        assert_eq!(written.len(), 2 + 2 * 3 + 2);
        for name in ["ca.pem", "replica-2.pem", "client.pem"] {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        for key in ["ca-key.pem", "replica-0-key.pem", "client-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        // A second run refuses to replace the CA.
        let again = generate(&args(dir.path(), &["10.0.0.1"])).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn hosts_are_one_for_all_or_one_each() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), &["h1", "h2"]);
        assert!(generate(&a)
            .unwrap_err()
            .to_string()
            .contains("2 hosts for 3"));
        assert_eq!(
            replica_hosts(&args(dir.path(), &["a:1", "b", "[::1]:7"])).unwrap(),
            vec!["a", "b", "::1"]
        );
    }
}
