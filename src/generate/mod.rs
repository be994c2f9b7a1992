//! Generated operating files: init.d script, systemd unit, logrotate snippet.
