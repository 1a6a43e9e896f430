"""An RTSP camera on loopback: Debian's GStreamer RTSP server streaming an image as MJPEG.

Run with the system Python (GStreamer's bindings come from Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good/base; `make test` installs them):

    /usr/bin/python3 gst_rtsp_camera.py --port 8554 --image code.png [--udp-only]

Serves rtsp://127.0.0.1:PORT/stream1, prints "ready" once it listens, runs until killed.
`--udp-only` is a camera (or relay) that refuses RTSP over TCP: it answers a TCP SETUP with
461 Unsupported Transport.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--udp-only", action="store_true")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{args.image}" ! pngdec ! imagefreeze ! videoconvert '
        "! video/x-raw,format=I420,framerate=10/1 ! jpegenc quality=90 "
        "! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(False)  # a media per client: a refused SETUP leaves no broken one
    if args.udp_only:
        factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP)
    server.get_mount_points().add_factory("/stream1", factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
