//! Data commands: put, get, delete, cas, scan and watch.

use std::io::Write;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use raft_kv::protocol::{ReadOp, Selector, WriteOp};
use serde_json::json;

use super::{Context, Outcome, explain, write_stdout};
use crate::args::{CasArgs, ConsistencyArg, ScanArgs, WatchArgs};
use crate::output::{event_json, event_line, kv_json, kv_table, opt_kv_json, text};

/// `put KEY [VALUE] [--prev-kv]`: without VALUE, the value is standard
/// input, byte for byte.
pub async fn put(
    context: &Context,
    key: String,
    value: Option<String>,
    prev_kv: bool,
) -> anyhow::Result<Outcome> {
    let value = match value {
        Some(value) => Bytes::from(value),
        None => read_value_from_stdin()?,
    };
    let client = context.client().await?;
    let op = WriteOp::Put {
        key: Bytes::from(key.clone()),
        value,
    };
    let result = if prev_kv {
        client.write_with_previous(op).await
    } else {
        client.write(op).await
    }
    .map_err(|e| explain(&format!("put {key:?} failed"), e))?;
    context.print(
        || {
            let mut line = format!("OK (revision {})\n", result.revision);
            if prev_kv {
                match &result.previous {
                    Some(kv) => line.push_str(&format!(
                        "previous: {:?} (mod revision {})\n",
                        text(&kv.value),
                        kv.mod_revision
                    )),
                    None => line.push_str("previous: none (the key was new)\n"),
                }
            }
            line
        },
        || {
            let mut out = json!({"key": key, "revision": result.revision});
            if prev_kv {
                out["previous"] = opt_kv_json(result.previous.as_ref());
            }
            out
        },
    )?;
    Ok(Outcome::Success)
}

/// Reads a value from standard input, refusing more than the cluster takes
/// before sending anything.
fn read_value_from_stdin() -> anyhow::Result<Bytes> {
    use std::io::Read;
    let limit = raft_kv::protocol::MAX_VALUE_LEN;
    let mut value = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut value)
        .context("cannot read the value from standard input")?;
    if value.len() > limit {
        bail!(
            "the value on standard input is over {limit} bytes, the most a value may hold; \
             store it in parts under several keys"
        );
    }
    Ok(Bytes::from(value))
}

/// `get KEY [--print-value-only]`: exit code 1 if the key does not exist.
pub async fn get(
    context: &Context,
    key: String,
    consistency: ConsistencyArg,
    print_value_only: bool,
) -> anyhow::Result<Outcome> {
    let client = context.client().await?;
    let result = client
        .read(
            ReadOp::Get {
                key: Bytes::from(key.clone()),
            },
            consistency.into(),
        )
        .await
        .map_err(|e| explain(&format!("get {key:?} failed"), e))?;
    match result.kvs.first() {
        Some(kv) if print_value_only => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&kv.value)
                .and_then(|()| stdout.flush())
                .context("cannot write to standard output")?;
            Ok(Outcome::Success)
        }
        Some(kv) => {
            context.print_table(|| kv_table([kv]), || kv_json(kv))?;
            Ok(Outcome::Success)
        }
        None => {
            context.print(
                || format!("key {key:?} not found (revision {})\n", result.revision),
                || json!({"key": key, "found": false, "revision": result.revision}),
            )?;
            Ok(Outcome::Negative)
        }
    }
}

/// `delete KEY`.
pub async fn delete(context: &Context, key: String) -> anyhow::Result<Outcome> {
    let client = context.client().await?;
    let result = client
        .delete(key.clone())
        .await
        .map_err(|e| explain(&format!("delete {key:?} failed"), e))?;
    let existed = result.succeeded;
    context.print(
        || {
            if existed {
                format!("deleted {key:?} (revision {})\n", result.revision)
            } else {
                format!("{key:?} did not exist; nothing deleted\n")
            }
        },
        || {
            json!({
                "key": key,
                "deleted": existed,
                "revision": result.revision,
            })
        },
    )?;
    Ok(Outcome::Success)
}

/// `cas KEY (--expected V | --absent) (--new V | --delete)`: exit code 1 and
/// the current value if it did not swap.
pub async fn cas(context: &Context, args: CasArgs) -> anyhow::Result<Outcome> {
    let client = context.client().await?;
    let key = args.key;
    let expected = if args.absent {
        None
    } else {
        args.expected.map(Bytes::from)
    };
    let new = if args.delete {
        None
    } else {
        args.new.map(Bytes::from)
    };
    let result = client
        .cas(key.clone(), expected, new)
        .await
        .map_err(|e| explain(&format!("cas {key:?} failed"), e))?;
    // For a failed CAS `previous` is the current value.
    let current = result.previous.as_ref();
    context.print(
        || {
            if result.succeeded {
                format!("swapped {key:?} (revision {})\n", result.revision)
            } else {
                match current {
                    Some(kv) => format!(
                        "not swapped: {key:?} holds {:?} (mod revision {})\n",
                        text(&kv.value),
                        kv.mod_revision
                    ),
                    None => format!("not swapped: {key:?} does not exist\n"),
                }
            }
        },
        || {
            if result.succeeded {
                json!({
                    "key": key,
                    "succeeded": true,
                    "revision": result.revision,
                    "previous": opt_kv_json(current),
                })
            } else {
                json!({
                    "key": key,
                    "succeeded": false,
                    "revision": result.revision,
                    "current": opt_kv_json(current),
                })
            }
        },
    )?;
    Ok(if result.succeeded {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

/// `scan (--prefix P | --start S [--end E]) [--limit N] [--rev R]`: every
/// page read at one revision.
pub async fn scan(context: &Context, args: ScanArgs) -> anyhow::Result<Outcome> {
    let (start, end, what) = match (&args.prefix, &args.start) {
        (Some(prefix), _) => (
            Bytes::from(prefix.clone()),
            raft_kv::protocol::prefix_end(prefix.as_bytes()),
            format!("scan --prefix {prefix:?} failed"),
        ),
        (None, Some(start)) => (
            Bytes::from(start.clone()),
            args.end.clone().map(Bytes::from),
            format!("scan --start {start:?} failed"),
        ),
        // clap requires one of the two.
        (None, None) => anyhow::bail!("scan needs --prefix or --start"),
    };
    let client = context.client().await?;
    let result = client
        .scan(
            start,
            end,
            args.limit.max(1) as usize,
            args.consistency.into(),
            args.rev,
        )
        .await
        .map_err(|e| explain(&what, e))?;
    context.print(
        || {
            let mut out = kv_table(&result.kvs).render();
            if result.more {
                out.push_str(&format!(
                    "(more keys follow: raise --limit, or continue with --start after the last key and \
                     --rev {} to read the same revision)\n",
                    result.revision
                ));
            }
            out
        },
        || {
            json!({
                "revision": result.revision,
                "kvs": result.kvs.iter().map(kv_json).collect::<Vec<_>>(),
                "more": result.more,
            })
        },
    )?;
    Ok(Outcome::Success)
}

/// `watch (KEY | --prefix P) [--from-revision R]`: prints events until
/// Ctrl-C. With JSON output, one JSON object per line.
pub async fn watch(context: &Context, args: WatchArgs) -> anyhow::Result<Outcome> {
    let (selector, what) = match (args.key, args.prefix) {
        (Some(key), _) => (
            Selector::Key(Bytes::from(key.clone())),
            format!("key {key:?}"),
        ),
        (None, Some(prefix)) => (
            Selector::Prefix(Bytes::from(prefix.clone())),
            format!("prefix {prefix:?}"),
        ),
        (None, None) => anyhow::bail!("watch needs a KEY or --prefix"),
    };
    let client = context.client().await?;
    let start = args.from_revision.unwrap_or(0);
    let mut watcher = client
        .watch(selector, start)
        .await
        .map_err(|e| explain(&format!("cannot start watching {what}"), e))?;
    eprintln!(
        "watching {what} from revision {} (Ctrl-C to stop)",
        watcher.next_revision()
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(Outcome::Success),
            events = watcher.next() => {
                let events = events.map_err(|e| {
                    explain(
                        &format!(
                            "the watch on {what} ended (resume with --from-revision {})",
                            watcher.next_revision()
                        ),
                        e,
                    )
                })?;
                let mut text = String::new();
                for event in &events {
                    if context.json() {
                        text.push_str(&event_json(event).to_string());
                    } else {
                        text.push_str(&event_line(event));
                    }
                    text.push('\n');
                }
                write_stdout(&text)?;
            }
        }
    }
}
