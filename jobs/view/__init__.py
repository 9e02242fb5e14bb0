"""`loupe view`: a Microscope for any atlas, local or on S3, served on 127.0.0.1.

Reads only what the atlas holds, through Loupe's reader (the same storage options and credential
chain as builds), and never writes to it. Pages are server-rendered HTML with a little plain
JavaScript (keyboard navigation, heat-map overlays); a JSON + PNG API serves the same data.
"""

from loupe.jobs.view.app import create_app

__all__ = ["create_app"]
