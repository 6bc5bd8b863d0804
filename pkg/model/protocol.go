package model

import "strings"

// Protocol is the application protocol of a service port, as Istio names it.
type Protocol string

const (
	ProtocolHTTP        Protocol = "HTTP"
	ProtocolHTTP2       Protocol = "HTTP2"
	ProtocolHTTPS       Protocol = "HTTPS"
	ProtocolGRPC        Protocol = "GRPC"
	ProtocolGRPCWeb     Protocol = "GRPC-Web"
	ProtocolTCP         Protocol = "TCP"
	ProtocolTLS         Protocol = "TLS"
	ProtocolUDP         Protocol = "UDP"
	ProtocolMongo       Protocol = "Mongo"
	ProtocolRedis       Protocol = "Redis"
	ProtocolMySQL       Protocol = "MySQL"
	ProtocolUnsupported Protocol = "UnsupportedProtocol"
)

// ParseProtocol maps a protocol name (case-insensitive) to a Protocol. Unknown names yield ProtocolUnsupported,
// which Istio treats as "detect automatically" and meshd, lacking protocol sniffing, serves as TCP.
func ParseProtocol(s string) Protocol {
	switch strings.ToLower(s) {
	case "http":
		return ProtocolHTTP
	case "http2", "h2c":
		return ProtocolHTTP2
	case "https":
		return ProtocolHTTPS
	case "grpc":
		return ProtocolGRPC
	case "grpc-web":
		return ProtocolGRPCWeb
	case "tcp":
		return ProtocolTCP
	case "tls":
		return ProtocolTLS
	case "udp":
		return ProtocolUDP
	case "mongo":
		return ProtocolMongo
	case "redis":
		return ProtocolRedis
	case "mysql":
		return ProtocolMySQL
	}
	return ProtocolUnsupported
}

// ProtocolFromPort derives a port's protocol the way Istio does for Kubernetes services: appProtocol wins, then the
// port name prefix ("http", "http-web", "grpc-api"), then well-known port numbers are not guessed.
func ProtocolFromPort(name, appProtocol string) Protocol {
	if appProtocol != "" {
		ap := appProtocol
		// Kubernetes standard application protocols, e.g. kubernetes.io/h2c.
		if i := strings.LastIndex(ap, "/"); i >= 0 {
			ap = ap[i+1:]
		}
		if p := ParseProtocol(ap); p != ProtocolUnsupported {
			return p
		}
	}
	prefix := name
	if i := strings.Index(name, "-"); i >= 0 {
		prefix = name[:i]
	}
	return ParseProtocol(prefix)
}

// IsHTTP reports whether traffic on the port is routed at layer 7 with HTTP route configuration.
func (p Protocol) IsHTTP() bool {
	switch p {
	case ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolGRPCWeb:
		return true
	}
	return false
}

// IsHTTP2 reports whether upstream connections must speak HTTP/2.
func (p Protocol) IsHTTP2() bool {
	return p == ProtocolHTTP2 || p == ProtocolGRPC
}

// IsTCP reports whether the port is proxied at layer 4 (including protocols meshd does not sniff).
func (p Protocol) IsTCP() bool {
	return !p.IsHTTP() && p != ProtocolUDP
}
