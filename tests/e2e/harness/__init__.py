"""The end-to-end harness: the app under the production command on a fresh database
(launch), the loopback servers it talks to (servers), an HTTP client for the chat API
(client) and the browser helpers (browser). The benchmarks use it too."""
