//! The README's first command must keep working: run it and check what it reports.

#[test]
fn quickstart_publishes_every_event_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quickstart")).output().expect("run quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("  published users.registered").count(), 5, "{stdout}");
    assert!(stdout.contains("pending in the outbox: 2"), "{stdout}");
    assert!(stdout.contains("done: 5 events published, 0 pending, 0 dead"), "{stdout}");
}
