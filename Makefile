# sim — git for system images.
#
#   make demo    build sim and run the main job on the embedded store:
#                commit the Debian corpus v1..v3, tag, log, diff, check out,
#                roll back in place, fsck
#   make test    everything the tests need, then vet, gofmt, go test and
#                every fuzz target for a few seconds (make fuzz)
#   make deb     build/sim_<version>_amd64.deb (static binary, units,
#                /etc/default/sim, man pages, completion; lintian if there)
#   make bench   install the peer tools and print the comparison tables
#                (store: bench/bench.sh; network lab: bench/netbench.sh;
#                BitTorrent: bench/btbench.sh, sealed: btbench.sh --seal;
#                multicast vs udpcast: bench/mcastbench.sh, with FEC: mcastbench.sh --fec;
#                day 2, rollouts vs SystemImager's rsync updates: bench/updatebench.sh;
#                node CPU of an install vs zstd -d | tar -x: bench/installcpubench.sh;
#                the live view under 1,000 agents: bench/monitorbench.sh;
#                a site cache behind a 50 Mbit link: bench/cachebench.sh;
#                50 nodes, every transport, auto vs the best: bench/fleetbench.sh;
#                the store on Ceph beside the embedded one: bench/cephbench.sh;
#                bare-metal install in VMs: bench/metalbench.sh)
#
# System packages are installed here (apt-get), so a bare Debian machine
# needs nothing else. Root is needed for the corpus (debootstrap, chroot).

SHELL      := /bin/bash
GO         ?= go
SIM        := bin/sim
CORPUS     ?= $(or $(SIM_CORPUS),/var/cache/sim/corpus)
DEMO_STORE ?= /var/tmp/sim-demo/store
DEMO_NODE  ?= /var/tmp/sim-demo/node
export CGO_ENABLED := 0

# The version and commit sim --version prints, from git (dist/version.sh:
# a Debian version, 0~gitYYYYMMDD.HASH before the first tag).
VERSION    ?= $(shell sh dist/version.sh)
COMMIT     ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS    := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
DEB_OUT    ?= build

# Debian packages the tests and the demo use: debootstrap builds the corpus;
# acl and attr give getfacl/getfattr for inspecting checkouts by hand;
# time (GNU) measures the demo.
TEST_DEBS := debootstrap acl attr time
# Multicast: udpcast is the peer of bench/mcastbench.sh; nftables drops
# packets in the lab's loss tests (testdata/lab.sh loss).
TEST_DEBS += udpcast nftables
# Metrics: promtool (package prometheus) lints GET /metrics in the tests.
TEST_DEBS += prometheus
# BitTorrent: aria2c (package aria2), a standard client, downloads sim's
# torrents in cmd/sim/bt_std_test.go (and is bench/btbench.sh's peer).
TEST_DEBS += aria2
# Frontends: the lab's nodes GET torrents and seeder status with curl
# (cmd/sim/frontends_lab_test.go).
TEST_DEBS += curl

# Debian packages the bare-metal install tests (cmd/sim/metal_test.go) and
# sim initrd build use: qemu and OVMF run the VMs (BIOS and UEFI); the
# Debian kernel is the initrd's; busybox-static is its userland; the mkfs
# tools go into it; grub-mkrescue (grub-*-bin, xorriso, mtools) makes the
# install ISO; cpio and zstd for inspecting an initrd by hand; mdadm,
# lvm2 and btrfs-progs for the RAID, LVM and btrfs layouts (issue 17);
# ipxe has the loaders sim netboot ipxe copies, dnsmasq-base (the binary,
# no service) checks and runs what sim netboot dnsmasq writes.
# Kept separate so branches touching TEST_DEBS merge cleanly.
METAL_DEBS := qemu-system-x86 ovmf linux-image-amd64 busybox-static dosfstools e2fsprogs xfsprogs util-linux \
              grub-pc-bin grub-efi-amd64-bin xorriso mtools cpio zstd mdadm lvm2 btrfs-progs ipxe dnsmasq-base
BOOTABLE   ?= /var/cache/sim/bootable

# Debian packages of the OCI and package tests: umoci and skopeo make and
# convert the images client/oci imports (and unpack what it exports);
# lintian checks the .deb; bash-completion, zsh and fish load its
# completion scripts; man-db renders its man pages (cmd/sim/deb_test.go);
# podman (with runc) runs an exported image (cmd/sim/oci_cli_test.go).
PKG_DEBS   := umoci skopeo lintian bash-completion zsh fish man-db podman runc
TEST_DEBS  += $(PKG_DEBS)
# chromium runs the fleet page's browser test headless (client/monitor, via chromedp).
TEST_DEBS  += chromium
# Ceph (issue 15): the S3 store's tests start a single-host cluster (one
# monitor, one bluestore OSD, radosgw) on loopback (store/s3/s3test).
# Installed without recommends (45 packages, ~90 s).
CEPH_DEBS  := ceph-mon ceph-osd radosgw

.PHONY: all build deps metal-deps corpus bootable demo test test-short vet bench metal-bench clean man deb fuzz screenshot

all: build

build:
	$(GO) build -trimpath -ldflags='$(LDFLAGS)' -o $(SIM) ./cmd/sim

# Man pages, one per command (cobra's doc generator), into build/man.
man: build
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) $(SIM) gen-man build/man

# The Debian package (dist/mkdeb.sh), then lintian when it is installed
# (make deps installs it): errors fail the build, warnings are shown.
deb: build
	@deb=$$(SIM=$(SIM) VERSION=$(VERSION) COMMIT=$(COMMIT) OUT=$(DEB_OUT) bash dist/mkdeb.sh) && \
	echo "$$deb: $$(du -k $$deb | cut -f1) KiB" && \
	if command -v lintian >/dev/null; then lintian --fail-on error "$$deb"; \
	else echo "lintian not installed (make deps): not checked"; fi

# Install the Debian packages once (skipped when all are present).
deps:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to apt-get install$$missing" >&2; exit 1; fi; \
		echo "apt-get install$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@missing=""; for p in $(CEPH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to apt-get install$$missing" >&2; exit 1; fi; \
		echo "apt-get install --no-install-recommends$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

metal-deps:
	@missing=""; for p in $(METAL_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make metal-deps: not root, skipping$$missing (VM tests will skip)" >&2; exit 0; fi; \
		echo "apt-get install$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The bootable Debian image of the VM tests (cached in $(BOOTABLE)); needs root.
bootable: corpus
	@if [ "$$(id -u)" = 0 ]; then SIM_CORPUS=$(CORPUS) bash testdata/mkbootable.sh $(BOOTABLE); \
	else echo "make bootable: not root, skipping (VM tests will skip)"; fi

# The real corpus (cached in $(CORPUS)); needs root.
corpus: deps
	@if [ "$$(id -u)" = 0 ]; then bash testdata/mkcorpus.sh $(CORPUS); \
	else echo "make corpus: not root, skipping (corpus tests will skip)"; fi

demo: build corpus
	@set -e; S="$(SIM) --store $(DEMO_STORE)"; \
	rm -rf $(dir $(DEMO_STORE)); \
	echo "== sim init"; $$S init; \
	n=0; for v in v1 v2 v3; do echo "== sim commit $(CORPUS)/$$v --image debian; sim tag debian-1.$$n debian"; \
		/usr/bin/env time -f "   %e s, %M KB peak" $$S commit $(CORPUS)/$$v --image debian -m "corpus $$v" | tail -1; \
		$$S tag debian-1.$$n debian; n=$$((n+1)); done; \
	echo "== sim commit (unchanged v3: read from the stat cache)"; \
	/usr/bin/env time -f "   %e s" $$S commit $(CORPUS)/v3 --image debian -m "v3 again" | tail -1; \
	echo "== sim images"; $$S images; \
	echo "== sim tag"; $$S tag; \
	echo "== sim log -n 2 debian"; $$S log -n 2 debian; \
	echo "== sim diff --stat debian-1.1 debian-1.2"; $$S diff --stat debian-1.1 debian-1.2; \
	echo "== sim checkout debian-1.2 $(DEMO_NODE)   (install)"; $$S checkout debian-1.2 $(DEMO_NODE); \
	echo "== sim checkout debian-1.1 $(DEMO_NODE)   (roll back in place)"; $$S checkout debian-1.1 $(DEMO_NODE); \
	echo "== sim diff debian-1.1 $(DEMO_NODE)   (nothing: the node is exactly 1.1)"; $$S diff debian-1.1 $(DEMO_NODE); \
	echo "== sim cat debian-1.2 /etc/motd"; $$S cat debian-1.2 /etc/motd | tail -2; \
	echo "== sim fsck --read-data"; $$S fsck --read-data; \
	echo "== store size: $$(du -sh $(DEMO_STORE) | cut -f1)"; \
	echo "== sim serve --listen 127.0.0.1:7480   (the image server, on loopback)"; \
	$(SIM) --store $(DEMO_STORE) serve --listen 127.0.0.1:7480 & srv=$$!; trap "kill $$srv 2>/dev/null || true" EXIT; sleep 0.5; \
	N="$(SIM) --store $(dir $(DEMO_STORE))node-store"; \
	echo "== a node: sim checkout --from http://127.0.0.1:7480 debian-1.1 (install over HTTP)"; \
	$$N checkout --from http://127.0.0.1:7480 debian-1.1 $(DEMO_NODE)2; \
	echo "== the node: sim checkout --from http://127.0.0.1:7480 debian-1.2 (update: only what changed travels)"; \
	$$N checkout --from http://127.0.0.1:7480 debian-1.2 $(DEMO_NODE)2; \
	echo "== another node over BitTorrent: the server derives and seeds the torrent of debian-1.2 on request"; \
	$(SIM) --store $(dir $(DEMO_STORE))node3-store checkout --from http://127.0.0.1:7480 --transport bittorrent debian-1.2 $(DEMO_NODE)3; \
	echo "== sim tag, run while the server holds the store (it runs the command)"; $$S tag; \
	kill $$srv; wait $$srv 2>/dev/null || true

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: deps corpus metal-deps bootable vet
	$(GO) test -count=1 -timeout 80m ./...
	$(MAKE) fuzz

# Every fuzz target (each decoder a peer reaches, every HTTP endpoint's
# request parsing, the layout and node documents, trees at checkout),
# each for FUZZTIME beyond its seeds: part of make test (~3 min).
FUZZTIME ?= 5s
FUZZ := ./sync:FuzzDecode ./sync:FuzzServer ./sync/bt:FuzzDecodeTorrent ./sync/bt:FuzzSeederServer \
        ./sync/mcast:FuzzDecode ./sync/mcast:FuzzManifest ./store:FuzzPackHeader ./snapshot:FuzzDecodeTree \
        ./snapshot:FuzzCheckoutTree ./client/layout:FuzzParse ./client/catalog:FuzzRegistry ./client/install:FuzzInstallServer
fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; for t in $(FUZZ); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn ($$pkg, $(FUZZTIME))"; \
		$(GO) test -count=1 -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) $$pkg >$$log 2>&1 || { cat $$log; exit 1; }; done

# The README's picture of the fleet page mid-rollout (TestFleetPage, real
# chromium); make test checks the page but leaves the tree alone.
screenshot: deps
	SIM_SCREENSHOT=$(CURDIR)/bench/monitor-page.png $(GO) test -count=1 -run '^TestFleetPage$$' ./cmd/sim

test-short: vet
	$(GO) test -count=1 -short ./...

bench: build corpus
	bash bench/deps.sh
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/bench.sh
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/netbench.sh bench/netresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/btbench.sh bench/btresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/btbench.sh --seal bench/btsealresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/btbench.sh --super bench/btsuperresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/mcastbench.sh bench/mcastresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/mcastbench.sh --fec bench/mcastfecresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/updatebench.sh bench/updateresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/installcpubench.sh bench/installcpuresults.md
	SIM=$(CURDIR)/$(SIM) bash bench/monitorbench.sh bench/monitorresults.md
	$(MAKE) screenshot
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/cachebench.sh bench/cacheresults.md
	SIM=$(CURDIR)/$(SIM) SIM_CORPUS=$(CORPUS) bash bench/fleetbench.sh bench/fleetresults.md
	SIM_CORPUS=$(CORPUS) bash bench/cephbench.sh bench/cephresults.md
	$(MAKE) metal-bench

# The bare-metal install figures (real VMs; needs root, qemu, the bootable image).
metal-bench: metal-deps bootable
	bash bench/metalbench.sh bench/metalresults.md

clean:
	rm -rf bin build
