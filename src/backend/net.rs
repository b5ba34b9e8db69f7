//! How the gateway reaches the backend on a corporate network: the proxy of
//! `HTTPS_PROXY`/`HTTP_PROXY` (lower-case too) unless `NO_PROXY` names the host, for every REST
//! call (ureq) and the realtime websocket (an HTTP CONNECT tunnel); and the trusted roots:
//! the built-in webpki roots plus the PEM certificates of `--ca-file` or `SSL_CERT_FILE`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

/// An HTTP proxy: host, port and optional basic credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// `user:password` as given (sent as Proxy-Authorization: Basic).
    creds: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.display())
    }
}

impl Proxy {
    /// `http://[user:pass@]host[:port][/]` (the scheme may be left out; only HTTP proxies).
    pub fn parse(var: &str, v: &str) -> Result<Proxy, String> {
        let rest = match v.split_once("://") {
            Some(("http" | "HTTP", r)) => r,
            Some((scheme, _)) => {
                return Err(format!(
                    "{var}: proxy scheme {scheme}:// is not supported; use an http:// proxy (HTTP CONNECT)"
                ))
            }
            None => v,
        };
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c.to_string()), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .map_err(|_| format!("{var}: bad proxy port {p:?}"))?,
            ),
            _ => (hostport, 80),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "{var}: cannot read the proxy address; use http://host:port"
            ));
        }
        Ok(Proxy {
            host: host.to_string(),
            port,
            creds,
        })
    }

    /// host:port, without credentials (for messages).
    pub fn display(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn ureq(&self) -> Result<ureq::Proxy, String> {
        let url = match &self.creds {
            Some(c) => format!("http://{c}@{}:{}", self.host, self.port),
            None => format!("http://{}:{}", self.host, self.port),
        };
        ureq::Proxy::new(url).map_err(|e| format!("proxy {}: {e}", self.display()))
    }
}

/// The network setup of one process, read once.
#[derive(Clone)]
pub struct Net {
    tls: Arc<rustls::ClientConfig>,
    https_proxy: Option<Proxy>,
    http_proxy: Option<Proxy>,
    no_proxy: Vec<String>,
}

fn env(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|n| {
        std::env::var(n)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (n.to_string(), v))
    })
}

/// The built-in roots plus every certificate of `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(f) = ca_file {
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(f)
            .map_err(|e| format!("cannot read the CA file {}: {e}; point --ca-file (or SSL_CERT_FILE) at a PEM file of certificates", f.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the CA file {} is not valid PEM: {e}", f.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the CA file {} holds no certificate (-----BEGIN CERTIFICATE-----); point --ca-file (or SSL_CERT_FILE) at the PEM file of your network's CA",
                f.display()
            ));
        }
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "no usable CA certificate in {}; check that it is the CA's certificate in PEM form",
                f.display()
            ));
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The host of an `http(s)://host[:port]/…` or `ws(s)://…` URL, lower-cased, without brackets.
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map(|x| x.0).unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

impl Net {
    /// From the environment, with `ca_file` (`--ca-file`, else `SSL_CERT_FILE`) added.
    pub fn from_env(ca_file: Option<&Path>) -> Result<Net, String> {
        let ca_file = ca_file
            .map(Path::to_path_buf)
            .or_else(|| env(&["SSL_CERT_FILE"]).map(|(_, v)| PathBuf::from(v)));
        let proxy = |names: &[&str]| -> Result<Option<Proxy>, String> {
            env(names).map(|(n, v)| Proxy::parse(&n, &v)).transpose()
        };
        Ok(Net {
            tls: tls_config(ca_file.as_deref())?,
            https_proxy: proxy(&["HTTPS_PROXY", "https_proxy"])?,
            http_proxy: proxy(&["HTTP_PROXY", "http_proxy"])?,
            no_proxy: env(&["NO_PROXY", "no_proxy"])
                .map(|(_, v)| {
                    v.split(',')
                        .map(|e| e.trim().to_ascii_lowercase())
                        .filter(|e| !e.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The proxy for `url` (`https`/`wss` → HTTPS_PROXY, `http`/`ws` → HTTP_PROXY), unless
    /// NO_PROXY names its host (`*`, the host, or a domain it is under) or the host is this
    /// machine (`localhost`, a loopback address: a proxy elsewhere cannot reach it; Go's
    /// net/http does the same).
    pub fn proxy_for(&self, url: &str) -> Option<&Proxy> {
        let secure = url.starts_with("https://") || url.starts_with("wss://");
        let p = if secure {
            self.https_proxy.as_ref()
        } else {
            self.http_proxy.as_ref()
        }?;
        let host = url_host(url);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return None;
        }
        let bypass = self.no_proxy.iter().any(|e| {
            let e = e
                .rsplit_once(':')
                .map(|x| x.0)
                .filter(|h| !h.contains(']') && !h.is_empty())
                .unwrap_or(e);
            let e = e.trim_start_matches("*.").trim_start_matches('.');
            e == "*" || host == e || host.ends_with(&format!(".{e}"))
        });
        (!bypass).then_some(p)
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The HTTP agent for calls to `url`: its proxy (if any) and the trusted roots.
    pub fn agent_for(&self, url: &str) -> Result<ureq::Agent, String> {
        let mut b = super::agent_builder().tls_config(self.tls.clone());
        if let Some(p) = self.proxy_for(url) {
            b = b.proxy(p.ureq()?);
        }
        Ok(b.build())
    }

    /// A TCP stream to `host:port`: direct, or through the proxy for `url` with an HTTP
    /// CONNECT tunnel (websockets).
    pub fn connect(
        &self,
        url: &str,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        match self.proxy_for(url) {
            None => dial(host, port, timeout),
            Some(p) => {
                let mut s = dial(&p.host, p.port, timeout)
                    .map_err(|e| format!("proxy {}: {e}", p.display()))?;
                s.set_read_timeout(Some(timeout))
                    .and_then(|_| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| format!("socket setup failed: {e}"))?;
                let auth = p
                    .creds
                    .as_ref()
                    .map(|c| {
                        format!(
                            "Proxy-Authorization: Basic {}\r\n",
                            base64::engine::general_purpose::STANDARD.encode(c)
                        )
                    })
                    .unwrap_or_default();
                let target = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                write!(
                    s,
                    "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
                )
                .map_err(|e| format!("proxy {}: {e}", p.display()))?;
                // Read the reply head byte by byte-ish (BufReader over a clone, bounded) so
                // nothing of the tunnel is consumed.
                let mut r = BufReader::with_capacity(1, s.try_clone().map_err(|e| e.to_string())?);
                let mut status = String::new();
                r.read_line(&mut status).map_err(|e| {
                    format!("proxy {} did not answer the CONNECT: {e}", p.display())
                })?;
                let mut total = status.len();
                loop {
                    let mut l = String::new();
                    let n = r
                        .read_line(&mut l)
                        .map_err(|e| format!("proxy {}: {e}", p.display()))?;
                    total += n;
                    if n == 0 || l == "\r\n" || l == "\n" || total > 16 * 1024 {
                        break;
                    }
                }
                let code = status.split_whitespace().nth(1).unwrap_or("");
                if code != "200" {
                    return Err(format!(
                        "proxy {} refused the tunnel to {target}: {}",
                        p.display(),
                        status.trim()
                    ));
                }
                Ok(s)
            }
        }
    }
}

fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("no address for {host}");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect to {a} failed: {e}"),
        }
    }
    Err(last)
}

/// A clearer word for TLS failures: which certificate problem, and what to do.
pub fn explain_tls(msg: &str) -> Option<String> {
    let m = msg.to_ascii_lowercase();
    if m.contains("unknownissuer") || m.contains("invalid peer certificate") {
        Some(format!(
            "the backend's TLS certificate is not trusted ({msg}); if your network inspects TLS, add its CA with --ca-file <pem> or SSL_CERT_FILE"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(https: Option<&str>, http: Option<&str>, no: &[&str]) -> Net {
        Net {
            tls: tls_config(None).unwrap(),
            https_proxy: https.map(|p| Proxy::parse("HTTPS_PROXY", p).unwrap()),
            http_proxy: http.map(|p| Proxy::parse("HTTP_PROXY", p).unwrap()),
            no_proxy: no.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn proxies_follow_the_scheme_and_no_proxy() {
        let n = net(
            Some("http://u:p@proxy:3128"),
            Some("proxy2:8080"),
            &["internal.example", ".corp", "10.0.0.1:443"],
        );
        assert_eq!(
            n.proxy_for("https://api.panorama.app").unwrap().display(),
            "http://proxy:3128"
        );
        assert_eq!(n.proxy_for("wss://api.panorama.app/x").unwrap().port, 3128);
        assert_eq!(
            n.proxy_for("http://h/x").unwrap().display(),
            "http://proxy2:8080"
        );
        assert!(n.proxy_for("https://internal.example/x").is_none());
        assert!(n.proxy_for("https://a.internal.example").is_none());
        assert!(n.proxy_for("https://b.corp:8443").is_none());
        assert!(n.proxy_for("https://10.0.0.1").is_none());
        assert!(n.proxy_for("https://notinternal.example").is_some());
        assert!(net(Some("http://p:1"), None, &["*"])
            .proxy_for("https://x")
            .is_none());
        assert!(net(None, None, &[]).proxy_for("https://x").is_none());
        for local in [
            "http://127.0.0.1:5432",
            "https://localhost/x",
            "https://[::1]:9",
        ] {
            assert!(n.proxy_for(local).is_none(), "{local}");
        }
        assert!(Proxy::parse("HTTPS_PROXY", "socks5://p:1")
            .unwrap_err()
            .contains("not supported"));
        assert!(format!("{:?}", Proxy::parse("X", "http://u:secret@p:1").unwrap()) == "http://p:1");
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_named() {
        let d = std::env::temp_dir().join(format!("pgw-ca-{}", std::process::id()));
        std::fs::write(&d, "not a certificate\n").unwrap();
        let e = tls_config(Some(&d)).err().unwrap();
        assert!(
            e.contains(&d.display().to_string()) && e.contains("no certificate"),
            "{e}"
        );
        let _ = std::fs::remove_file(&d);
        assert!(tls_config(Some(Path::new("/nonexistent/ca.pem")))
            .err()
            .unwrap()
            .contains("cannot read the CA file"));
    }
}
