"""The domain (virtual host) proxy: routes HTTP by Host and TLS by SNI to the owning client."""
