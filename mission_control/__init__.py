"""
mission-control: a real-time hub for people who run fleets of AI agents.

Agents and their back-ends publish what they are doing; every connected dashboard sees it within
milliseconds over an authenticated WebSocket.  See README.md and docs/.
"""

__version__ = "0.1.0"
