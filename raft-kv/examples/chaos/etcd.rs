//! The chaos clients' way in through etcd's v3 API (`--api etcd`): the Rust
//! `etcd-client` crate, as any etcd application would use it, against the
//! nodes' `etcd_listen` ports. Gets are etcd's linearizable ranges, puts
//! are puts, compare-and-swap is a transaction (value equal, or create
//! revision 0 for "absent"; on failure it reads the key).

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, TlsOptions, Txn, TxnOp,
    TxnOpResponse,
};

use super::Op;

/// What an etcd client presents: the cluster CA and a client certificate.
#[derive(Clone)]
pub(crate) struct EtcdTls {
    pub(crate) ca_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// A client of the etcd API at `endpoints` (tried in turn by etcd-client's
/// balancer).
pub(crate) async fn connect(tls: &EtcdTls, endpoints: &[SocketAddr]) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(tls.ca_pem.clone()))
                .identity(Identity::from_pem(
                    tls.cert_pem.clone(),
                    tls.key_pem.clone(),
                )),
        )
        .with_timeout(Duration::from_secs(4))
        .with_connect_timeout(Duration::from_millis(1500));
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("https://{a}")).collect();
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| e.to_string())
}

/// Runs one operation as the native client would answer it: a get's value,
/// a put's nothing, a CAS's "true" or the value it found + "\0false". An
/// error says whether it is definite (the request had no effect: a read,
/// one refused as invalid, or one never sent because no connection could be
/// made to the node).
pub(crate) async fn perform(
    client: &Client,
    op: &Op,
    key: &str,
) -> Result<Option<String>, (bool, String)> {
    let mut client = client.clone();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let failed = |e: etcd_client::Error, read: bool| {
        let never_applied = matches!(
            &e,
            etcd_client::Error::GRpcStatus(status)
                if status.code() == tonic::Code::InvalidArgument
                    || (status.code() == tonic::Code::Unavailable
                        && status.message() == "tcp connect error")
        );
        (read || never_applied, e.to_string())
    };
    match op {
        Op::Get => client
            .get(key, None)
            .await
            .map(|r| r.kvs().first().map(|kv| text(kv.value())))
            .map_err(|e| failed(e, true)),
        Op::Put(value) => client
            .put(key, value.as_str(), None)
            .await
            .map(|_| None)
            .map_err(|e| failed(e, false)),
        Op::Cas { expected, new } => {
            let compare = match expected {
                Some(value) => Compare::value(key, CompareOp::Equal, value.as_str()),
                None => Compare::create_revision(key, CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, new.as_str(), None)])
                .or_else([TxnOp::get(key, None)]);
            let answer = client.txn(txn).await.map_err(|e| failed(e, false))?;
            if answer.succeeded() {
                return Ok(Some("true".into()));
            }
            let found = match answer.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(get)) => get
                    .kvs()
                    .first()
                    .map(|kv| text(kv.value()))
                    .unwrap_or_default(),
                other => {
                    return Err((false, format!("unexpected transaction answer: {other:?}")));
                }
            };
            Ok(Some(found + "\u{0}false"))
        }
    }
}
