//! Authentication: who the user is ([`user`]) and which genuine app is
//! calling ([`app`]).

pub mod app;
pub mod user;
