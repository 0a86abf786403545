# The `dovesnap:local` image that docker-compose.yml runs (both services): dovesnap
# built from this checkout, plus Open vSwitch and the tools it needs from Debian's
# packages (the same packages a host install uses).
#
#   docker-compose up -d --build        # or `docker compose up -d --build`
#   docker build -t dovesnap:local .    # the image alone
#
# Three stages, all on Debian bookworm (debian:bookworm-slim by default, `BASE`):
#   toolchain  Rust (stable for dovesnap, nightly + rust-src for the XDP program) and
#              bpf-linker built against the nightly's own LLVM, at the paths
#              `cargo xtask setup` uses on a host. It depends on nothing in the
#              checkout, so Docker's layer cache keeps it across source changes (the
#              first build takes several minutes for it).
#   build      `cargo build --release` of the checkout (.dockerignore keeps target/
#              and .git out of the context).
#   (last)     the runtime: Debian's Open vSwitch and netfilter tools and the binary.
#
# Where no registry answers (our CI machines: no Docker Hub, and no TLS to
# static.rust-lang.org or crates.io from inside a build), `cargo xtask image` makes the
# same Debian release with debootstrap (`dovesnap-base:bookworm`, passed as BASE) and,
# from it, `dovesnap-toolchain:local` holding the host's own toolchains (the ones
# `cargo xtask setup` made) and crate cache with CARGO_NET_OFFLINE, passed as
# TOOLCHAIN_BASE: the toolchain stage then finds Rust installed and skips the
# download, and the build stage compiles from the crate cache. docker-compose.yml
# takes both from DOVESNAP_BASE and DOVESNAP_TOOLCHAIN_BASE.
ARG BASE=debian:bookworm-slim
ARG TOOLCHAIN_BASE=${BASE}

FROM ${TOOLCHAIN_BASE} AS toolchain
# curl: rustup. gcc, libc6-dev: the host crates. clang, libelf-dev, zlib1g-dev, m4,
# pkg-config, make: xsk-rs' libxdp and libbpf builds. binutils: strip.
# Rust: the toolchains this repository is built and tested with; a newer nightly may
# bring an LLVM that the pinned bpf-linker or aya does not know. The XDP program is
# built by dovesnap-user/build.rs with the toolchain named `nightly`: the pinned
# nightly is linked under that name (what `rustup toolchain link` does). bpf-linker
# has no prebuilt download: it builds against the libLLVM inside the nightly
# toolchain, found through a prefix of symlinks that stays in place (bpf-linker
# keeps an rpath to it). One RUN, and PATH set in it rather than by ENV: on the vfs
# storage driver every layer is a full copy of the file system.
RUN export PATH="/root/.cargo/bin:$PATH" \
    && stable=1.95.0 nightly=nightly-2026-05-20 bpf_linker=0.13.0 \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libc6-dev clang m4 make libelf-dev zlib1g-dev \
        pkg-config binutils \
    && rm -rf /var/lib/apt/lists/* \
    && if command -v bpf-linker >/dev/null && rustc +nightly --version >/dev/null; then \
        echo "Rust and bpf-linker are installed already: $(rustc -V), $(rustc +nightly -V)"; \
    else \
        curl -sSf --retry 3 -o /tmp/rustup-init \
            https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init \
        && chmod +x /tmp/rustup-init \
        && /tmp/rustup-init -y -q --no-modify-path --profile minimal \
            --default-toolchain "$stable" \
        && rm /tmp/rustup-init \
        && rustup toolchain install -q --profile minimal --component rust-src "$nightly" \
        && ln -s "$nightly-x86_64-unknown-linux-gnu" \
            /root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu \
        && sysroot="$(rustc +nightly --print sysroot)" \
        && lib="$(cd "$sysroot/lib" && ls libLLVM.so.*)" \
        && major="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')" \
        && mkdir -p /opt/dovesnap/llvm/lib \
        && ln -s "$sysroot/lib/$lib" /opt/dovesnap/llvm/lib/libLLVM.so \
        && ln -s "$sysroot/lib/$lib" "/opt/dovesnap/llvm/lib/$lib" \
        && LLVM_PREFIX=/opt/dovesnap/llvm cargo install -q --locked bpf-linker \
            --version "$bpf_linker" --no-default-features --features "llvm-$major" \
        && rm -rf /root/.cargo/registry \
        && bpf-linker --version; \
    fi

FROM toolchain AS build
COPY . /src
# The release profile keeps debug info (for perf on a host); the image does not need
# it, and compiling without it is faster. target/ goes with the layer that made it.
RUN export PATH="/root/.cargo/bin:$PATH" \
    && cd /src \
    && CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked \
        -p dovesnap-user --bin dovesnap \
    && strip --strip-debug -o /dovesnap target/release/dovesnap \
    && rm -rf target

FROM ${BASE}
# openvswitch-switch: ovsdb-server, ovs-vswitchd, ovs-vsctl (the `ovs` service).
# nftables, iptables: nat networks. iproute2, ethtool: link setup and diagnostics.
# kmod: modprobe openvswitch (ovs-run), where the host has the module.
# libelf1, zlib1g: libxdp (AF_XDP), linked into the binary dynamically.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        openvswitch-switch nftables iptables iproute2 ethtool kmod libelf1 zlib1g \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /dovesnap /usr/local/bin/dovesnap
# The `ovs` service's entry point: ovsdb-server + ovs-vswitchd, stopped on SIGTERM.
COPY packaging/ovs-run /usr/local/bin/ovs-run

ENV RUST_LOG=info
# Docker's default stop signal; dovesnap detaches its XDP programs on it.
STOPSIGNAL SIGTERM
CMD ["/usr/local/bin/dovesnap", "daemon"]
