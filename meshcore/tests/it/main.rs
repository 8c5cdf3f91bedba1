mod hbone;
mod pki;
mod support;
mod tls;
mod zds;
