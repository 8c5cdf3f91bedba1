//! meshctl: the mesh's command line. Today: the echo server used by tests and demos (`meshctl
//! echo`). The local cluster (`up`, `status`, `exec`, `down`) builds on ztunnel's node mode and
//! node agent (issue 5).

pub mod echo;
