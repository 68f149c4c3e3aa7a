//! Placeholder: the store helper replaces this file with the
//! `redis-server` / Redis Cluster spawner used by the store tests.
