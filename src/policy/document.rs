//! SEAM (policy work): multi-document policy files.
