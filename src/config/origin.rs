//! Where a configuration came from: the file's path and text, and the
//! place of every key in it, taken from the TOML parser's spans once, at
//! parse time.
//!
//! Kept with the parsed [`Config`](super::Config), so checks made later
//! (the `[app]` settings, the paths a start needs) name the line of the key
//! they are about without reading the file again.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::Problem;

/// One key of the file: its dotted path and where its key and value are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySpan {
    /// `workers.count`, `app.queue.name`, `daemon2`.
    pub key: String,
    /// Bytes of the key (for a `[table]`, of its name in the header).
    pub key_span: Range<usize>,
    /// Bytes of the value (for a table, of the whole table).
    pub value_span: Range<usize>,
}

/// A config file as parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The file (absolute when it came from [`Config::load`](super::Config::load)).
    pub path: PathBuf,
    /// Its whole text.
    pub text: String,
    /// Every key at every depth, in the order the parser gave them.
    pub keys: Vec<KeySpan>,
}

impl Origin {
    /// The origin of `text` read from `path`, with the keys of `root` (the
    /// parse of `text`).
    pub fn new(path: &Path, text: &str, root: &DeTable<'_>) -> Origin {
        let mut keys = Vec::new();
        collect_keys(root, "", &mut keys);
        Origin {
            path: path.to_path_buf(),
            text: text.to_string(),
            keys,
        }
    }

    /// The origin of a text that is not valid TOML: no keys to locate.
    pub fn unparsed(path: &Path, text: &str) -> Origin {
        Origin {
            path: path.to_path_buf(),
            text: text.to_string(),
            keys: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// The span of `key`'s name in the file, if the file sets it.
    pub fn span_of(&self, key: &str) -> Option<&KeySpan> {
        self.keys.iter().find(|k| k.key == key)
    }

    /// A problem with `key`, placed at the key if the file has it, else
    /// just in the file.
    pub fn problem(&self, key: &str, message: impl std::fmt::Display) -> Problem {
        let p = Problem::new(key, message).in_file(&self.path);
        match self.span_of(key) {
            Some(k) => {
                let (l, c) = self.line_col(k.key_span.start);
                p.at(l, c)
            }
            None => p,
        }
    }

    /// A problem with `key`, placed at byte `offset` of the file (a place
    /// inside its value).
    pub fn problem_at(&self, key: &str, offset: usize, message: impl std::fmt::Display) -> Problem {
        let (l, c) = self.line_col(offset);
        Problem::new(key, message).in_file(&self.path).at(l, c)
    }

    /// A TOML or serde error from parsing or deserializing this text, as a
    /// problem naming the innermost key around its span and placed at that
    /// key (at the span itself when no key is around it).
    pub fn toml_problem(&self, e: &toml::de::Error) -> Problem {
        let message = e.message().trim().replace('\n', " ");
        let Some(span) = e.span() else {
            return Problem::message(message).in_file(&self.path);
        };
        let key = self
            .keys
            .iter()
            .filter(|k| {
                (k.key_span.start <= span.start && span.start < k.key_span.end.max(k.key_span.start + 1))
                    || (k.value_span.start <= span.start
                        && span.end <= k.value_span.end.max(k.value_span.start + 1))
            })
            .max_by_key(|k| k.key.matches('.').count());
        // Placed at that key, like every other problem about a key.
        let (l, c) = self.line_col(key.map_or(span.start, |k| k.key_span.start));
        let key = key.map(|k| k.key.clone());
        Problem {
            file: Some(self.path.clone()),
            line: Some(l),
            col: Some(c),
            key,
            message,
        }
    }
}

impl std::fmt::Debug for Origin {
    /// The path and the size, not the whole text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("path", &self.path)
            .field("bytes", &self.text.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn collect_keys(table: &DeTable<'_>, prefix: &str, out: &mut Vec<KeySpan>) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push(KeySpan {
            key: key.clone(),
            key_span: k.span(),
            value_span: v.span(),
        });
        if let DeValue::Table(t) = v.get_ref() {
            collect_keys(t, &key, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_placed_by_line_and_character_column() {
        let text = "# é\n[workers]\n  count = 3\n[app]\nq = { a = 1 }\n";
        let root = DeTable::parse(text).unwrap();
        let o = Origin::new(Path::new("/x.toml"), text, root.get_ref());
        assert_eq!(
            o.problem("workers.count", "m").to_string(),
            "/x.toml:3:3: workers.count: m"
        );
        assert_eq!(o.problem("workers", "m").to_string(), "/x.toml:2:2: workers: m");
        assert_eq!(o.problem("app.q.a", "m").to_string(), "/x.toml:5:7: app.q.a: m");
        assert_eq!(
            o.problem("daemon.name", "m").to_string(),
            "/x.toml: daemon.name: m"
        );
        // Columns count characters, not bytes.
        assert_eq!(o.line_col(text.find('é').unwrap() + 2), (1, 4));
    }
}
