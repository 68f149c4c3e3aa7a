//! The policy model: the CRD types ([`types`]), the policy file documents
//! ([`document`]), the compile step ([`compile`]) into the immutable
//! [`snapshot`] the request path reads, and the sources that keep it
//! current ([`source`]); [`crd`] prints the CustomResourceDefinitions;
//! [`bounds`] holds the ranges every operator-supplied value must fall in.

pub mod bounds;
pub mod catalog;
pub mod compile;
pub mod crd;
pub mod document;
pub mod duration;
pub mod hosts;
pub mod snapshot;
pub mod source;
pub mod template;
pub mod types;
