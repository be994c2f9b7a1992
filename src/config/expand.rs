//! `${VAR}` in config strings, from the daemon's environment.
//!
//! Every string value of the file (`[daemon]`, `[workers]` and `[app]`, in
//! arrays and inline tables too, but not the keys) is expanded once, right
//! after the parse and before any check, so each check sees the value in
//! effect. The syntax is a small, predictable part of the shell's:
//!
//! * `${NAME}`: the variable's value; unset is an error, located at the
//!   `${` in the file (a typo must not become an empty path or password);
//! * `${NAME:-default}`: the default when the variable is unset or empty
//!   (the default is literal text up to the first `}`);
//! * `$$`: a literal `$`;
//! * any other `$` is kept as written, so `sh -c 'echo $HOME'` in a
//!   command means what it says.
//!
//! Values from the environment are not expanded again.

use std::borrow::Cow;
use std::ffi::OsString;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::dotenv::valid_name;
use super::origin::Origin;
use super::Problem;

/// Where the daemon's variables come from (the process environment, or a
/// table in tests).
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process environment.
pub(crate) fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The reference as written (`${DB_HOST}`, or `${` when unterminated),
    /// to find it in the file.
    pub token: String,
    pub message: String,
}

/// Expands `s` (see the module doc).
pub(crate) fn expand(s: &str, lookup: Lookup<'_>) -> Result<String, Fault> {
    const LITERAL: &str = "a literal $ is written $$";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(close) = r.find('}') else {
                return Err(Fault {
                    token: "${".into(),
                    message: format!("\"${{\" without a closing \"}}\" ({LITERAL})"),
                });
            };
            let token = format!("${{{}}}", &r[..close]);
            let (name, default) = match r[..close].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&r[..close], None),
            };
            if !valid_name(name) {
                return Err(Fault {
                    message: format!("{token}: {name:?} is not a variable name ({LITERAL})"),
                    token,
                });
            }
            let value = lookup(name);
            let value = match (value, default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (None, Some(d)) => d.to_string(),
                (Some(v), _) => v.into_string().map_err(|_| Fault {
                    message: format!("{token}: the value of {name} is not UTF-8"),
                    token: token.clone(),
                })?,
                (None, None) => {
                    return Err(Fault {
                        message: format!(
                            "{token} is not set (give a default with ${{{name}:-value}}; {LITERAL})"
                        ),
                        token,
                    })
                }
            };
            out.push_str(&value);
            rest = &r[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands every string value under `root` in place. A value that cannot
/// be expanded is a problem placed at its `${` in the file; its key is then
/// dropped from `[daemon]` and `[workers]` (so it is not reported again as
/// an invalid value; its default applies), and kept as written in `[app]`
/// (where a missing key would be a second, misleading error).
pub(super) fn expand_tree(root: &mut DeTable<'_>, origin: &Origin, lookup: Lookup<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    walk_table(root, "", origin, lookup, &mut problems);
    problems
}

fn walk_table(
    t: &mut DeTable<'_>,
    prefix: &str,
    origin: &Origin,
    lookup: Lookup<'_>,
    problems: &mut Vec<Problem>,
) {
    let mut drop = Vec::new();
    for (k, v) in t.iter_mut() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let before = problems.len();
        walk_value(v, &key, origin, lookup, problems);
        let in_app = key == "app" || key.starts_with("app.");
        if problems.len() > before && !v.get_ref().is_table() && !in_app {
            drop.push(k.get_ref().to_string());
        }
    }
    for k in drop {
        t.remove(k.as_str());
    }
}

fn walk_value(
    v: &mut Spanned<DeValue<'_>>,
    key: &str,
    origin: &Origin,
    lookup: Lookup<'_>,
    problems: &mut Vec<Problem>,
) {
    let span = v.span();
    match v.get_mut() {
        DeValue::String(s) => match expand(s, lookup) {
            Ok(x) => {
                if x != **s {
                    *s = Cow::Owned(x);
                }
            }
            Err(f) => {
                // At the reference itself when the file has it as written
                // (not behind an escape), else at the value.
                let raw = origin.text.get(span.clone()).unwrap_or("");
                let at = span.start + raw.find(&f.token).unwrap_or(0);
                problems.push(origin.problem_at(key, at, f.message));
            }
        },
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                walk_value(item, key, origin, lookup, problems);
            }
        }
        DeValue::Table(t) => walk_table(t, key, origin, lookup, problems),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some("".into()),
            "DOLLARS" => Some("a$$b${HOST}".into()),
            "BAD" => {
                use std::os::unix::ffi::OsStringExt;
                Some(OsString::from_vec(vec![0xff]))
            }
            _ => None,
        }
    }

    fn x(s: &str) -> Result<String, String> {
        expand(s, &env).map_err(|f| f.message)
    }

    #[test]
    fn references_defaults_and_literal_dollars() {
        assert_eq!(x("plain").unwrap(), "plain");
        assert_eq!(x("${HOST}:5432").unwrap(), "db.example:5432");
        assert_eq!(x("a${HOST}b${HOST}").unwrap(), "adb.examplebdb.example");
        assert_eq!(x("${NOPE:-local host}").unwrap(), "local host");
        assert_eq!(x("${HOST:-x}").unwrap(), "db.example");
        assert_eq!(x("${EMPTY:-x}").unwrap(), "x", "empty counts as unset with :-");
        assert_eq!(x("${EMPTY}").unwrap(), "", "set, even if empty");
        assert_eq!(x("${NOPE:-}").unwrap(), "");
        assert_eq!(x("cost $$5, $$$$").unwrap(), "cost $5, $$");
        assert_eq!(x("echo $HOME $ $1 end$").unwrap(), "echo $HOME $ $1 end$");
        assert_eq!(
            x("${DOLLARS}").unwrap(),
            "a$$b${HOST}",
            "values are not expanded again"
        );
        assert_eq!(x("é${HOST}é").unwrap(), "édb.exampleé");
    }

    #[test]
    fn what_cannot_be_expanded_says_why() {
        let e = x("/srv/${APP_HOME}/x").unwrap_err();
        assert!(
            e.starts_with("${APP_HOME} is not set (give a default with ${APP_HOME:-value}"),
            "{e}"
        );
        assert!(x("${HOST").unwrap_err().contains("without a closing"));
        assert!(x("${1X}").unwrap_err().contains("\"1X\" is not a variable name"));
        assert!(x("${}").unwrap_err().contains("is not a variable name"));
        assert!(x("${BAD}").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn the_tree_is_expanded_in_place_and_faults_are_located() {
        let text = "[daemon]\npidfile = \"${HOST}/x.pid\"\nworkdir = \"/a/${NOPE}\"\n\
                    [workers]\ncommand = [\"sh\", \"${HOST:-h}\", \"$${NOPE2}\"]\n\
                    env = { A = \"${HOST}\", B = \"x ${NOPE3}\" }\n[app]\nq = \"${NOPE4}\"\n";
        let mut root = DeTable::parse(text).unwrap();
        let origin = Origin::new(Path::new("/c.toml"), text, root.get_ref());
        let mut problems: Vec<String> = expand_tree(root.get_mut(), &origin, &env)
            .iter()
            .map(|p| p.to_string())
            .collect();
        // (In the order of the keys; a load sorts them by place.)
        problems.sort_by_key(|p| p.split(':').nth(1).map(str::to_string));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("/c.toml:3:15: daemon.workdir: ${NOPE} is not set"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("/c.toml:6:31: workers.env.B: ${NOPE3} is not set"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("/c.toml:8:6: app.q: ${NOPE4} is not set"),
            "{problems:?}"
        );
        let t = root.get_ref();
        let s = |v: &Spanned<DeValue<'_>>| v.get_ref().as_str().map(str::to_string);
        let daemon = t.get("daemon").unwrap().get_ref().as_table().unwrap();
        assert_eq!(s(daemon.get("pidfile").unwrap()).unwrap(), "db.example/x.pid");
        assert!(daemon.get("workdir").is_none(), "dropped: its default applies");
        let w = t.get("workers").unwrap().get_ref().as_table().unwrap();
        let DeValue::Array(cmd) = w.get("command").unwrap().get_ref() else {
            panic!()
        };
        let cmd: Vec<String> = cmd.iter().filter_map(s).collect();
        assert_eq!(cmd, ["sh", "db.example", "${NOPE2}"]);
        let env_t = w.get("env").unwrap().get_ref().as_table().unwrap();
        assert_eq!(s(env_t.get("A").unwrap()).unwrap(), "db.example");
        assert!(env_t.get("B").is_none());
        let app = t.get("app").unwrap().get_ref().as_table().unwrap();
        assert_eq!(s(app.get("q").unwrap()).unwrap(), "${NOPE4}", "kept in [app]");
    }
}
