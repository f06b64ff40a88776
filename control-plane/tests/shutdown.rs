//! Shutdown: SIGTERM and SIGINT end the process with status 0, promptly.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{get, start, table, TablesDir};

#[test]
fn sigterm_exits_0_promptly_even_with_an_idle_connection() {
    let dir = TablesDir::new("term");
    dir.write("dev.toml", &table(1, 2));
    let mut cp = start(&dir, &[]);
    assert_eq!(
        get(&cp, "/healthz").status,
        200,
        "serving before the signal"
    );

    // A sidecar's keep-alive connection, idle after one request, must not hold the exit up.
    let mut idle = TcpStream::connect(cp.addr("control_plane")).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: cp\r\n\r\n")
        .expect("send a keep-alive request");

    let sent = Instant::now();
    cp.signal(libc::SIGTERM);
    let status = cp
        .wait_timeout(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no exit within 3 s of SIGTERM\nstderr:\n{}", cp.stderr()));
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status}\nstderr:\n{}",
        cp.stderr()
    );
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());
}

#[test]
fn sigint_exits_0() {
    let dir = TablesDir::new("int");
    dir.write("dev.toml", &table(1, 2));
    let mut cp = start(&dir, &[]);
    cp.signal(libc::SIGINT);
    let status = cp
        .wait_timeout(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no exit within 3 s of SIGINT\nstderr:\n{}", cp.stderr()));
    assert!(status.success(), "SIGINT exits 0, got {status}");
}
