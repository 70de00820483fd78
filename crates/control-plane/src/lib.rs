//! meshd
