//! SEAM (policy work): policy sources (file watcher).
