//! systemd integration: socket activation (`LISTEN_FDS`) and readiness and watchdog
//! notifications (`NOTIFY_SOCKET`). Without systemd every function here does nothing.
