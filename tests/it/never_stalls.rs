//! Issue 9: the parent never stalls and never lies about a start.
//!
//! Silent, slow, greedy and numerous control clients; commands that die
//! during startup or never say they are ready; an `init` that blocks; a
//! stopped (SIGSTOP) worker asked to stop; a worker that floods its notify
//! descriptor.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::health::{status_json, status_workers, stop};
use crate::util::*;

fn testworker(extra: &str) -> Daemon {
    Daemon::with(example("testworker"), "testworker", extra)
}

/// Waits for a worker of `parent` other than `old`.
fn wait_replacement(d: &Daemon, parent: i32, old: i32) -> bool {
    wait_until(DEADLINE, || {
        let w = d.workers(parent);
        w.len() == 2 && !w.contains(&old)
    })
}

#[test]
fn silent_and_half_request_clients_do_not_stall_the_parent() {
    let d = Daemon::demo("[workers]\ncount = 2\n");
    let parent = d.start();
    let workers = d.wait_workers(parent, 2);
    // Before the fix each of these held the loop for 2 s in a blocking
    // read, one after the other: 16 clients, 32 s.
    let mut clients = Vec::new();
    for i in 0..16 {
        let mut c = UnixStream::connect(&d.socket).expect("connect");
        if i % 2 == 1 {
            c.write_all(b"{\"cmd\":\"sta").unwrap();
        }
        clients.push(c);
    }
    let t0 = Instant::now();
    kill(workers[0], 9);
    assert!(wait_replacement(&d, parent, workers[0]), "{}", d.log());
    let replaced = t0.elapsed();
    // Generous for a loaded machine, far below what 16 stalls would take.
    assert!(replaced < Duration::from_secs(10), "replaced after {replaced:?}");
    // `status` is answered while they still hold their connections (the
    // newest client wins a place over the oldest silent one).
    let v = status_json(&d);
    assert_eq!(status_workers(&v).len(), 2, "{v}");
    // The parent drops each of them at its deadline: the client sees EOF.
    for mut c in clients {
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = Vec::new();
        let n = c
            .read_to_end(&mut buf)
            .expect("closed by the daemon, not timed out");
        assert_eq!(n, 0, "nothing is sent to a client that asked nothing");
    }
    stop(&d);
}

#[test]
fn a_client_that_sends_too_much_or_never_reads_costs_nothing() {
    let d = Daemon::demo("[workers]\ncount = 1\n");
    let parent = d.start();
    d.wait_workers(parent, 1);
    // A request line without end: dropped once over the size limit.
    let mut greedy = UnixStream::connect(&d.socket).unwrap();
    let junk = vec![b'x'; 64 * 1024];
    let _ = greedy.write_all(&junk); // the daemon may close before the end
    greedy.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = Vec::new();
    if let Err(e) = greedy.read_to_end(&mut buf) {
        // A reset is a close too (the daemon left our bytes unread).
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "not closed by the daemon: {e}"
        );
    }
    // Clients that ask for the status and never read the answer, many
    // more than the connection cap.
    let mut lazy = Vec::new();
    for _ in 0..40 {
        if let Ok(mut c) = UnixStream::connect(&d.socket) {
            let _ = c.write_all(b"{\"cmd\":\"status\"}\n");
            lazy.push(c);
        }
    }
    let v = status_json(&d);
    assert_eq!(status_workers(&v).len(), 1, "still answering: {v}");
    drop(lazy);
    stop(&d);
}

#[test]
fn a_command_that_dies_during_startup_fails_the_start_truthfully() {
    let d = Daemon::rookery("");
    let out = d.run(&["run", "-w", "2", "--", "sh", "-c", "sleep 0.2; exit 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", d.log());
    assert!(stderr.contains("failed to start: exit status 1"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
    // Nothing is left running.
    assert!(wait_until(DEADLINE, || d.pid().is_none_or(|p| !alive(p))));
}

#[test]
fn a_notify_command_starts_when_it_says_ready_and_fails_when_it_does_not() {
    let d = Daemon::rookery("[workers]\nready = \"notify\"\nready_timeout = \"2s\"\n");
    let out = d.run(&[
        "run",
        "-w",
        "2",
        "--",
        "sh",
        "-c",
        "sleep 0.3; echo ready >&3; exec sleep 300",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = status_json(&d);
    let states: Vec<String> = status_workers(&v)
        .iter()
        .filter_map(|w| w["state"].as_str().map(String::from))
        .collect();
    assert_eq!(states, ["running", "running"], "{v}");
    stop(&d);

    let d = Daemon::rookery("[workers]\nready = \"notify\"\nready_timeout = \"1s\"\n");
    let out = d.run(&["run", "-w", "1", "--", "sleep", "300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("workers.ready_timeout"), "{stderr}");
    assert!(wait_until(DEADLINE, || d.pid().is_none_or(|p| !alive(p))));
}

#[test]
fn an_init_that_blocks_fails_the_start_after_init_timeout() {
    let d = testworker(
        "[workers]\ncount = 1\ninit_timeout = \"1s\"\nstop_timeout = \"1s\"\n[app]\ninit_sleep = \"1h\"\n",
    );
    let out = d.run(&["start"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", d.log());
    assert!(stderr.contains("init did not return within 1s"), "{stderr}");
    assert!(wait_until(DEADLINE, || d.pid().is_none_or(|p| !alive(p))));
}

#[test]
fn a_stopped_worker_is_continued_so_its_cleanup_runs() {
    let d = testworker("[workers]\ncount = 1\nstop_timeout = \"60s\"\n");
    let parent = d.start();
    let w = d.wait_workers(parent, 1)[0];
    kill(w, 19); // SIGSTOP
    assert!(wait_until(DEADLINE, || proc_state(w) == Some('T')));
    let t0 = Instant::now();
    let out = d.run(&["stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without SIGCONT it would sleep until the SIGKILL at 60 s.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(d.log().contains("cleanup after"), "{}", d.log());
}

#[test]
fn a_worker_flooding_its_notify_descriptor_does_not_take_the_parent_s_cpu() {
    let d = Daemon::rookery("[workers]\nmin_uptime = \"0s\"\n");
    let out = d.run(&["run", "-w", "1", "--", "sh", "-c", "yes heartbeat >&3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its pipe is read at a bounded rate (what that costs the parent is
    // measured by the bench), and the parent keeps answering.
    assert!(d.wait_log("is muted for the rest of"), "{}", d.log());
    let v = status_json(&d);
    assert_eq!(status_workers(&v).len(), 1, "still answering: {v}");
    stop(&d);
}
