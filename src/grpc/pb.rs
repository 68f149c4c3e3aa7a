//! The generated protobuf types and gRPC stubs of tollgate's ext_authz
//! subset (see `proto/README.md`), laid out by protobuf package so the
//! generated `super::` paths resolve. Public so tests and tools build
//! requests with the very types the server decodes.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `envoy.*` packages.
pub mod envoy {
    pub mod service {
        pub mod auth {
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

/// `google.rpc` (the `Status` of a decision).
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The encoded `FileDescriptorSet` of every file above, served by gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));

pub use envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
pub use envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
