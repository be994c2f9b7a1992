//! The two small protocols between workers and the parent, each as one
//! typed message with its encoder and decoder side by side, so both ends
//! share one definition.
//!
//! * [`WorkerMsg`]: forked Rust workers write one line per message to a
//!   pipe shared by all workers (`ready PID`, `fail PID error text`,
//!   `recycle PID JOBS`). A line is written with a single `write` of at most
//!   `PIPE_BUF` bytes, so lines from different workers never mix.
//! * [`NotifyLine`]: external commands write words to their own notify
//!   descriptor (`ready`, `heartbeat`, `busy`, `idle`, `done`), in the
//!   spirit of s6's notification-fd.

use nix::unistd::Pid;

/// Longest encoded [`WorkerMsg`] line, newline included: below `PIPE_BUF`
/// (4096 on Linux), so each write is atomic.
pub(crate) const MAX_MSG: usize = 1024;

/// What a forked worker tells the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerMsg {
    /// `init` returned: the worker takes jobs.
    Ready,
    /// `init` failed with this error; the worker exits next.
    Failed(String),
    /// The worker reached its job limit after this many jobs and asks for a
    /// replacement (it keeps working until told to stop).
    Recycle {
        /// Jobs done.
        jobs: u64,
    },
}

impl WorkerMsg {
    /// One line, newline included, at most [`MAX_MSG`] bytes, cut at a
    /// character boundary.
    pub(crate) fn encode(&self, pid: Pid) -> String {
        let mut line = match self {
            WorkerMsg::Ready => format!("ready {pid}"),
            // issue 9: one line, control characters shown escaped (the
            // text reaches the operator's terminal in the start verdict).
            WorkerMsg::Failed(e) => format!("fail {pid} {}", crate::text::escape_controls(e)),
            WorkerMsg::Recycle { jobs } => format!("recycle {pid} {jobs}"),
        };
        crate::text::truncate_at_char_boundary(&mut line, MAX_MSG - 1);
        line.push('\n');
        line
    }

    /// Parses one line (without its newline); `None` for garbage.
    pub(crate) fn decode(line: &str) -> Option<(Pid, WorkerMsg)> {
        let mut parts = line.splitn(3, ' ');
        let kind = parts.next()?;
        let pid = Pid::from_raw(parts.next()?.parse().ok().filter(|p: &i32| *p > 0)?);
        let rest = parts.next();
        let msg = match kind {
            "ready" if rest.is_none() => WorkerMsg::Ready,
            "fail" => WorkerMsg::Failed(rest.unwrap_or("").to_string()),
            "recycle" => WorkerMsg::Recycle {
                jobs: rest?.trim().parse().ok()?,
            },
            _ => return None,
        };
        Some((pid, msg))
    }
}

/// A line an external command writes on its notify descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyLine {
    /// Started (counts with `workers.ready = "notify"`); also a heartbeat.
    Ready,
    /// A sign of life.
    Heartbeat,
    /// Took a job (`busy`, or `busy LABEL` for a job with a label: see
    /// [`busy_label`]).
    Busy,
    /// Waiting for work.
    Idle,
    /// Finished a job.
    Done,
    /// The queue's backlog as the command sees it (`backlog N`).
    Backlog(u64),
    /// issue 11: paused (after `pause_signal`, once the job in hand is
    /// done), until it says `idle` or `busy` again.
    Paused,
}

impl NotifyLine {
    /// Parses one line; surrounding white space is ignored.
    pub(crate) fn parse(line: &str) -> Option<NotifyLine> {
        Some(match line.trim() {
            "ready" => NotifyLine::Ready,
            "heartbeat" => NotifyLine::Heartbeat,
            "busy" => NotifyLine::Busy,
            "idle" => NotifyLine::Idle,
            "done" => NotifyLine::Done,
            "paused" => NotifyLine::Paused,
            other if busy_label(other).is_some() => NotifyLine::Busy,
            other => NotifyLine::Backlog(other.strip_prefix("backlog ")?.trim().parse().ok()?),
        })
    }

    /// The word, as a command writes it.
    #[cfg(test)]
    pub(crate) fn word(self) -> &'static str {
        match self {
            NotifyLine::Ready => "ready",
            NotifyLine::Heartbeat => "heartbeat",
            NotifyLine::Busy => "busy",
            NotifyLine::Idle => "idle",
            NotifyLine::Done => "done",
            NotifyLine::Backlog(_) => "backlog",
            NotifyLine::Paused => "paused",
        }
    }
}

/// The label of a `busy LABEL` notify line (issue 12: a command's job
/// id, shown by `status` and in the lines logged about the job), if any.
pub(crate) fn busy_label(line: &str) -> Option<&str> {
    let label = line.trim().strip_prefix("busy ")?.trim();
    (!label.is_empty()).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_messages_round_trip() {
        let pid = Pid::from_raw(42);
        for m in [
            WorkerMsg::Ready,
            WorkerMsg::Failed("no database: connection refused".into()),
            WorkerMsg::Recycle { jobs: 1000 },
        ] {
            let line = m.encode(pid);
            assert!(line.ends_with('\n'));
            assert_eq!(WorkerMsg::decode(line.trim_end_matches('\n')), Some((pid, m)));
        }
        assert_eq!(WorkerMsg::decode("ready x"), None);
        assert_eq!(WorkerMsg::decode("ready -3"), None);
        assert_eq!(WorkerMsg::decode("recycle 3 many"), None);
        assert_eq!(WorkerMsg::decode("launch 3"), None);
    }

    #[test]
    fn a_long_non_ascii_error_is_cut_at_a_character_boundary() {
        let m = WorkerMsg::Failed("é".repeat(2000));
        let line = m.encode(Pid::from_raw(7));
        assert!(line.len() <= MAX_MSG);
        let (_, back) = WorkerMsg::decode(line.trim_end()).unwrap();
        assert!(matches!(back, WorkerMsg::Failed(e) if e.starts_with("éé")));
    }

    #[test]
    fn an_error_is_sent_as_one_line_with_its_control_characters_shown() {
        let m = WorkerMsg::Failed("no db\nat\r\x1b[2Jhost".into());
        let line = m.encode(Pid::from_raw(7));
        assert_eq!(line, "fail 7 no db\\nat\\r\\x1b[2Jhost\n");
    }

    #[test]
    fn notify_lines() {
        for l in [
            NotifyLine::Ready,
            NotifyLine::Heartbeat,
            NotifyLine::Busy,
            NotifyLine::Idle,
            NotifyLine::Done,
            NotifyLine::Paused,
        ] {
            assert_eq!(NotifyLine::parse(&format!(" {} \r", l.word())), Some(l));
        }
        assert_eq!(NotifyLine::parse("READY"), None);
        assert_eq!(
            NotifyLine::parse("backlog 3000\r"),
            Some(NotifyLine::Backlog(3000))
        );
        assert_eq!(NotifyLine::parse("backlog lots"), None);
        assert_eq!(NotifyLine::parse("busy order 42\r"), Some(NotifyLine::Busy));
        assert_eq!(busy_label(" busy order 42 \r"), Some("order 42"));
        assert_eq!(busy_label("busy"), None);
        assert_eq!(busy_label("busy   "), None);
    }
}
