"""ilianaai-avatar: the avatar-session gateway of the ilianaai chatbot."""
from setuptools import setup

SANDBOX = [
    "SecantusDB==0.6.0b17",  # MongoDB wire server for local runs and tests (dev only, GPL-2.0)
    # The sandbox's LiveKit room server and its synthetic avatar (sandbox/livekit/, sandbox/avatar.py), besides
    # aiortc and livekit-protocol (the gateway's own):
    "livekit-api==1.2.2",  # LiveKit access tokens (JWT): minted and verified
    "Pillow==13.0.0",  # the avatar's picture
    "numpy==2.4.6",  # the avatar's frames and tone
]
TEST = SANDBOX + [
    "pytest==9.2.0",
    "supervisor==4.3.0",  # runs conf/supervisor.conf.example in tests/faults/test_deployment.py
    "hypothesis==6.170.17",  # the bad-input fuzzer (tests/gateway/test_bad_input.py)
    "pytest-tornado==0.8.1",
    "schemathesis==4.32.5",  # the contract test against /openapi.json (tests/gateway/test_openapi.py)
    "openapi-spec-validator==0.9.0",  # the document's validity (tests/gateway/test_openapi.py)
    "setuptools<82",  # pytest-tornado imports pkg_resources
    "livekit==1.2.1",  # the Python rtc SDK (Rust core) joining sandbox rooms in tests/sandbox/test_livekit_rooms.py
]
LINT = [  # make lint, make typecheck (pyproject.toml holds their settings)
    "ruff==0.17.6",
    "mypy==2.4.1",
    "import-linter==2.17",  # the layering contracts
]

setup(
    name="ilianaai-avatar",
    version="0.1.0",
    description="Avatar-session gateway: HeyGen / LiveAvatar proxy with customer auth, transcripts and Petya hand-off",
    python_requires=">=3.11",
    # The production packages. The sandbox (sandbox/) runs from a checkout, with the `sandbox` extra: `make run`.
    packages=["conf", "domain", "observability", "models", "clients", "services", "relay", "handlers",
              "handlers.static"],
    py_modules=["server"],
    include_package_data=True,
    package_data={"conf": [".env.example"], "handlers.static": ["*"]},  # the demo console's files
    install_requires=[
        "tornado==6.6.1",
        "pycurl==7.49.0",
        "mongoengine==0.29.3",
        "pymongo==4.20.0",
        "marshmallow==4.4.0",
        "python-dotenv==1.2.4",
        "protobuf==7.36.2",  # reads the web SDK's pipecat TextFrames on the socket (relay/pipecat.py)
        "prometheus_client==0.26.0",  # GET /metrics (observability/metrics.py)
        "apispec[marshmallow]==6.10.1",  # GET /openapi.json, from the marshmallow schemas (handlers/openapi.py)
        "uvloop==0.22.1",  # the default EVENT_LOOP: the socket relay's asyncio transports in C (relay/pump.py)
        # The room agent, a data-only LiveKit participant (clients/livekit.py):
        "aiortc==1.16.0",  # WebRTC (data channels only)
        "av==18.1.0",  # aiortc's media library, pinned as it is imported with it
        "livekit-protocol==1.1.29",  # LiveKit's signalling and data protobuf messages
    ],
    extras_require={"sandbox": SANDBOX, "test": TEST, "lint": LINT, "dev": TEST + LINT},
    entry_points={"console_scripts": ["ilianaai-avatar=server:main"]},
)
