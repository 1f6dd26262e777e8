"""The web UI for teams: one module per page. Views parse input, call one service or selector
and render; every page needs a login and shows only the user's team (TeamMembership)."""
