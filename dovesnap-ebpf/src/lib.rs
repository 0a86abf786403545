#![no_std]
//! Types shared by the eBPF program and userspace (being written).
