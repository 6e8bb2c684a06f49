//! The `boardroom` binary as users and Kubernetes run it: real processes, real signals, and
//! clients we did not write (grpcurl).

mod binary;
mod grpcurl;
mod load;
mod otlp;
mod replicas;
