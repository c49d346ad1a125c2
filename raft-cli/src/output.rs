//! Printing results: aligned tables for people, JSON for scripts.
//!
//! Keys and values are bytes; they are shown as UTF-8 (invalid sequences
//! replaced by U+FFFD). Every command builds its JSON with [`serde_json`]
//! and its table with [`Table`], so both stay in one place per command.

use std::fmt::Write as _;

use raft_kv::protocol::{KeyValue, Member, WatchEvent};
use serde_json::{Value, json};

/// A table: a header row and data rows, rendered with columns aligned.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are left blank, extra ones dropped).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Renders the table; every line ends with a newline, no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{cell:<width$}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes shown as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A key-value as JSON.
pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

/// An optional key-value as JSON (`null` if absent).
pub fn opt_kv_json(kv: Option<&KeyValue>) -> Value {
    kv.map_or(Value::Null, kv_json)
}

/// Key-values as a table.
pub fn kv_table<'a>(kvs: impl IntoIterator<Item = &'a KeyValue>) -> Table {
    let mut table = Table::new(["KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION"]);
    for kv in kvs {
        table.row([
            text(&kv.key),
            text(&kv.value),
            kv.create_revision.to_string(),
            kv.mod_revision.to_string(),
            kv.version.to_string(),
        ]);
    }
    table
}

/// Members as JSON.
pub fn members_json(members: &[Member]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "address": m.address,
                    "voter": m.voter,
                })
            })
            .collect(),
    )
}

/// Members as a table.
pub fn members_table(members: &[Member]) -> Table {
    let mut table = Table::new(["ID", "ADDRESS", "KIND"]);
    for m in members {
        table.row([
            m.id.to_string(),
            m.address.clone(),
            if m.voter { "voter" } else { "learner" }.to_string(),
        ]);
    }
    table
}

/// A watch event as one JSON line.
pub fn event_json(event: &WatchEvent) -> Value {
    json!({
        "revision": event.revision,
        "kind": event_kind(event),
        "key": text(&event.kv.key),
        "value": text(&event.kv.value),
        "create_revision": event.kv.create_revision,
        "mod_revision": event.kv.mod_revision,
        "version": event.kv.version,
    })
}

/// A watch event as one line of text: `REVISION KIND KEY [VALUE]`.
pub fn event_line(event: &WatchEvent) -> String {
    match event.kind {
        raft_kv::protocol::EventKind::Put => format!(
            "{} PUT {} {}",
            event.revision,
            text(&event.kv.key),
            text(&event.kv.value)
        ),
        raft_kv::protocol::EventKind::Delete => {
            format!("{} DELETE {}", event.revision, text(&event.kv.key))
        }
    }
}

fn event_kind(event: &WatchEvent) -> &'static str {
    match event.kind {
        raft_kv::protocol::EventKind::Put => "put",
        raft_kv::protocol::EventKind::Delete => "delete",
    }
}

/// An optional number for a table cell (`-` if unknown).
pub fn cell<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_kv::protocol::EventKind;

    fn kv(key: &str, value: &[u8]) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease: 0,
        }
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(["ID", "ADDRESS", "ROLE"]);
        table.row(["1", "127.0.0.1:7001", "leader"]);
        table.row(["12", "h:2", ""]);
        table.row(["3"]);
        assert_eq!(
            table.render(),
            "ID  ADDRESS         ROLE\n\
             1   127.0.0.1:7001  leader\n\
             12  h:2\n\
             3\n"
        );
    }

    #[test]
    fn key_values_render_as_text_and_json() {
        let table = kv_table([&kv("a", b"hello"), &kv("b", &[0xff, b'x'])]).render();
        assert_eq!(
            table,
            "KEY  VALUE  CREATE_REV  MOD_REV  VERSION\n\
             a    hello  3           7        2\n\
             b    \u{fffd}x     3           7        2\n"
        );
        assert_eq!(
            kv_json(&kv("a", b"hello")),
            json!({"key": "a", "value": "hello", "create_revision": 3, "mod_revision": 7, "version": 2})
        );
        assert_eq!(opt_kv_json(None), Value::Null);
    }

    #[test]
    fn members_render() {
        let members = [
            Member {
                id: 1,
                address: "a:1".into(),
                voter: true,
            },
            Member {
                id: 4,
                address: "a:4".into(),
                voter: false,
            },
        ];
        assert_eq!(
            members_table(&members).render(),
            "ID  ADDRESS  KIND\n1   a:1      voter\n4   a:4      learner\n"
        );
        assert_eq!(
            members_json(&members),
            json!([{"id": 1, "address": "a:1", "voter": true}, {"id": 4, "address": "a:4", "voter": false}])
        );
    }

    #[test]
    fn events_render() {
        let put = WatchEvent {
            revision: 7,
            kind: EventKind::Put,
            kv: kv("w/1", b"v"),
            prev: None,
        };
        assert_eq!(event_line(&put), "7 PUT w/1 v");
        assert_eq!(event_json(&put)["kind"], "put");
        let delete = WatchEvent {
            revision: 8,
            kind: EventKind::Delete,
            kv: kv("w/1", b""),
            prev: Some(kv("w/1", b"v")),
        };
        assert_eq!(event_line(&delete), "8 DELETE w/1");
        assert_eq!(event_json(&delete)["kind"], "delete");
        assert_eq!(cell(Some(3)), "3");
        assert_eq!(cell::<u64>(None), "-");
    }
}
