//! How the API's listener is secured: TLS with client certificates and
//! access by policy, or plain gRPC on loopback (or on purpose, with
//! `--insecure-plaintext`). Decides at start-up, before anything is served;
//! never serves a call itself.

use crate::access::Access;

/// How a listener is secured: TLS with client certificates and access by
/// policy, or neither (a loopback listener, or one an operator chose to
/// leave open with `--insecure-plaintext`).
pub struct Security {
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub access: Access,
}

impl Security {
    pub fn plaintext() -> Self {
        Self {
            tls: None,
            access: Access::Open,
        }
    }

    /// The security of a listener bound to `address`: TLS and a policy
    /// together, or neither on loopback, or neither anywhere only when the
    /// operator says `insecure_plaintext`. Flags are named as `flags` says
    /// (the coordinator's and `godwit run`'s differ).
    pub fn for_listener(
        address: std::net::SocketAddr,
        tls: Option<crate::tls::ServerTlsFiles>,
        policy: Option<&std::path::Path>,
        insecure_plaintext: bool,
        flags: &ListenerFlags,
    ) -> godwit_common::Result<Self> {
        use godwit_common::Error;
        match (tls, policy) {
            (Some(tls), Some(policy)) => {
                if insecure_plaintext {
                    return Err(Error::Spec(format!(
                        "--insecure-plaintext contradicts {}: choose one",
                        flags.cert
                    )));
                }
                Ok(Self {
                    tls: Some(tls.server_config()?),
                    access: Access::by_policy(policy)?,
                })
            }
            (Some(_), None) => Err(Error::Spec(
                "TLS with client certificates needs --policy YAML as well: it says which identity may do what \
                 for which customers (see the README's security model)"
                    .into(),
            )),
            (None, Some(_)) => Err(Error::Spec(format!(
                "--policy needs TLS: callers are identified by their client certificates; add {}, {} and {}",
                flags.cert, flags.key, flags.client_ca
            ))),
            (None, None) if address.ip().is_loopback() => Ok(Self::plaintext()),
            (None, None) if insecure_plaintext => {
                tracing::warn!(%address, "serving the API WITHOUT TLS or access control on a non-loopback address (--insecure-plaintext): anyone who can reach it can cut over, cancel or throttle any job");
                Ok(Self::plaintext())
            }
            (None, None) => Err(Error::Spec(format!(
                "refusing to serve the API on {address} without TLS: anyone who could reach it could cut over, \
                 cancel or throttle any job; pass {}, {}, {} and --policy (or listen on 127.0.0.1, or say \
                 --insecure-plaintext to accept that risk)",
                flags.cert, flags.key, flags.client_ca
            ))),
        }
    }
}

/// How a binary names its TLS flags, for messages.
pub struct ListenerFlags {
    pub cert: &'static str,
    pub key: &'static str,
    pub client_ca: &'static str,
}
