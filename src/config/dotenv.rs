//! `workers.env_file`: variables for every worker, in the dotenv format.
//!
//! One `KEY=VALUE` per line; blank lines and lines starting with `#` are
//! skipped; a line may start with `export ` (so the file can also be
//! sourced by a shell). A value is taken as written (trimmed, up to a ` #`
//! comment), or between single quotes (literally), or between double
//! quotes (with `\n`, `\t`, `\r`, `\"`, `\\` and `\$` escapes). There is no
//! `${VAR}` expansion in the file and no multi-line value: a value is what
//! the line says, and a line that is not one of these forms is an error
//! naming the file and the line, never skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// An env file, as read when the configuration was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Where it was read from (absolute when the config came from a file).
    pub path: PathBuf,
    /// Its variables (a key set twice: the last line wins).
    pub vars: BTreeMap<String, String>,
}

/// A line of an env file that is not `KEY=VALUE`: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters) of the fault.
    pub col: usize,
    pub message: String,
}

/// Whether `name` is a portable environment variable name
/// (`[A-Za-z_][A-Za-z0-9_]*`), the only kind a shell can read.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What is wrong with `name` as a worker variable: not a portable name, or
/// one of rookery's own (`ROOKERY_*`, which rookery sets itself).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if !valid_name(name) {
        Err(format!(
            "{name:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
        ))
    } else if name.starts_with("ROOKERY_") {
        Err(format!(
            "{name} is reserved: rookery sets the ROOKERY_* variables itself"
        ))
    } else {
        Ok(())
    }
}

/// Parses the text of an env file: its variables, or every bad line.
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, String>, Vec<LineError>> {
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some((k, v))) => {
                vars.insert(k, v);
            }
            Ok(None) => {}
            Err((byte, message)) => errors.push(LineError {
                line: i + 1,
                col: line[..byte.min(line.len())].chars().count() + 1,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors)
    }
}

/// One line: `None` for a blank or comment line; an error is the byte
/// offset of the fault and what it is.
fn parse_line(line: &str) -> Result<Option<(String, String)>, (usize, String)> {
    let body = line.trim_start();
    let mut at = line.len() - body.len();
    if body.is_empty() || body.starts_with('#') {
        return Ok(None);
    }
    let body = match body.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => {
            let r = rest.trim_start();
            at += body.len() - r.len();
            r
        }
        _ => body,
    };
    let Some((key, value)) = body.split_once('=') else {
        return Err((at, "expected KEY=VALUE".to_string()));
    };
    let key = key.trim_end();
    check_name(key).map_err(|m| (at, m))?;
    // Where the value starts in the line, for the errors about it.
    let value_at = at + (body.len() - value.len()) + (value.len() - value.trim_start().len());
    let value = value.trim_start();
    if value.contains('\0') {
        return Err((value_at, "the value has a NUL byte".to_string()));
    }
    let (value, rest) = match value.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let inner = &value[1..];
            let mut out = String::new();
            let mut end = None;
            let mut chars = inner.char_indices();
            while let Some((j, c)) = chars.next() {
                match c {
                    c if c == q => {
                        end = Some(j + 1);
                        break;
                    }
                    '\\' if q == '"' => match chars.next() {
                        Some((_, 'n')) => out.push('\n'),
                        Some((_, 't')) => out.push('\t'),
                        Some((_, 'r')) => out.push('\r'),
                        Some((_, e @ ('"' | '\\' | '$'))) => out.push(e),
                        Some((_, e)) => {
                            out.push('\\');
                            out.push(e);
                        }
                        None => out.push('\\'),
                    },
                    c => out.push(c),
                }
            }
            let Some(end) = end else {
                return Err((value_at, format!("unterminated {q} quote (a value is one line)")));
            };
            (out, &inner[end..])
        }
        _ => {
            // An unquoted value ends at a comment: ` #` or a `#` first.
            let cut = if value.starts_with('#') {
                0
            } else {
                value
                    .find(" #")
                    .or_else(|| value.find("\t#"))
                    .unwrap_or(value.len())
            };
            (value[..cut].trim_end().to_string(), "")
        }
    };
    let rest_trimmed = rest.trim_start();
    if !rest_trimmed.is_empty() && !rest_trimmed.starts_with('#') {
        let off = line.len() - rest_trimmed.len();
        return Err((off, "unexpected text after the closing quote".to_string()));
    }
    Ok(Some((key.to_string(), value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap().into_iter().collect()
    }

    fn err(text: &str) -> Vec<(usize, usize, String)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.line, e.col, e.message))
            .collect()
    }

    #[test]
    fn the_forms_users_write() {
        let text = "# a comment\n\n  \nA=1\nexport B = two words  # a comment\n\
                    C='single $HOME \\n # kept'\nD=\"dq \\\"x\\\" \\n \\$y \\q\"   # note\n\
                    E=\nF=a#b\nA=again\n\texport\tG=tab\nexported=1\n_H_2 = x=y\n";
        let got = ok(text);
        let want = [
            ("A", "again"),
            ("B", "two words"),
            ("C", "single $HOME \\n # kept"),
            ("D", "dq \"x\" \n $y \\q"),
            ("E", ""),
            ("F", "a#b"),
            ("G", "tab"),
            ("_H_2", "x=y"),
            ("exported", "1"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
        assert!(ok("").is_empty());
        assert_eq!(ok("X=\"\"\nY=''\n").len(), 2);
    }

    #[test]
    fn a_bad_line_is_located_and_nothing_is_skipped_silently() {
        let text = "OK=1\njust words\n1X=2\nROOKERY_WORKER_SLOT=9\nQ=\"open\n  R='x' y\nexport\nS-T=1\n";
        let e = err(text);
        assert_eq!(e.len(), 7, "{e:?}");
        assert_eq!((e[0].0, e[0].1, e[0].2.as_str()), (2, 1, "expected KEY=VALUE"));
        assert_eq!((e[1].0, e[1].1), (3, 1));
        assert!(e[1].2.contains("\"1X\" is not a valid variable name"), "{e:?}");
        assert_eq!((e[2].0, e[2].1), (4, 1));
        assert!(e[2].2.contains("reserved"), "{e:?}");
        assert_eq!((e[3].0, e[3].1), (5, 3));
        assert!(e[3].2.starts_with("unterminated \" quote"), "{e:?}");
        assert_eq!((e[4].0, e[4].1), (6, 9));
        assert!(e[4].2.contains("after the closing quote"), "{e:?}");
        assert_eq!((e[5].0, e[5].2.as_str()), (7, "expected KEY=VALUE"));
        assert_eq!(e[6].0, 8, "{e:?}");
        assert!(e[6].2.contains("\"S-T\" is not a valid variable name"), "{e:?}");
        // A NUL cannot be in an environment.
        assert_eq!(err("A=x\0y\n")[0].0, 1);
    }

    #[test]
    fn names() {
        for good in ["A", "_", "path_2", "LANG"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "é", "ROOKERY_X"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
