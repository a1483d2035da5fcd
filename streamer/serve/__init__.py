"""`streamer serve`: the live session in a web page (aiohttp + aiortc), safe by default.

    command.py   the flags, their checks, the model and styles, then the server
    studio.py    the sessions behind the page: the server's source and the browser cameras, the style book
    rtc.py       WebRTC (aiortc): the tracks out and in, ICE kept on loopback for a loopback server
    security.py  token, Origin/Host checks, upload limits, the self-signed certificate
    server.py    the HTTP routes and the page (page/: index.html, app.js, style.css; no build step)
"""
