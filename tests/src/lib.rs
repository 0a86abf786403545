//! Shared fixtures for the privileged integration and end-to-end tests.
