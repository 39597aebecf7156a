package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is the cluster's certificate authority and the files derived from it.
// It is generated in-process with crypto/x509 (milliseconds, no openssl).
type PKI struct {
	Dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

// certSpec is one client or serving certificate signed by the cluster CA.
type certSpec struct {
	file   string // base name: <file>.crt / <file>.key
	cn     string
	orgs   []string
	server bool
	dns    []string
	ips    []net.IP
}

// NewPKI creates the CA and every certificate and key the cluster uses.
func NewPKI(dir string, nodes []NodeSpec) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	p := &PKI{Dir: dir}
	if err := p.createCA(); err != nil {
		return nil, err
	}
	specs := []certSpec{
		{
			file: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
			ips: []net.IP{net.ParseIP(BridgeIP), net.ParseIP(KubernetesServiceIP), net.ParseIP("127.0.0.1")},
		},
		// The apiserver's client identity towards kubelets (logs, exec).
		{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
		{file: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}},
		// These user names are what the built-in RBAC bindings expect.
		{file: "controller-manager", cn: "system:kube-controller-manager"},
		{file: "scheduler", cn: "system:kube-scheduler"},
		{file: "kube-proxy", cn: "system:kube-proxy"},
	}
	for _, n := range nodes {
		// The Node authorizer and NodeRestriction admission identify a
		// kubelet by exactly this name and group.
		specs = append(specs, certSpec{file: "kubelet-" + n.Name, cn: "system:node:" + n.Name, orgs: []string{"system:nodes"}})
	}
	for _, s := range specs {
		if err := p.issue(s); err != nil {
			return nil, err
		}
	}
	// Service account token signing key (RSA: the default RS256 issuer).
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	if err := writePEM(p.path("sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa), 0o600); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("service account public key: %w", err)
	}
	if err := writePEM(p.path("sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *PKI) path(name string) string { return filepath.Join(p.Dir, name) }

// Cert and Key return the paths of a certificate issued by NewPKI.
func (p *PKI) Cert(name string) string { return p.path(name + ".crt") }
func (p *PKI) Key(name string) string  { return p.path(name + ".key") }
func (p *PKI) CA() string              { return p.path("ca.crt") }

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func (p *PKI) createCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return fmt.Errorf("CA serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "dhpp-e2e-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	if p.caCert, err = x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("parse CA: %w", err)
	}
	p.caKey = key
	if err := writePEM(p.path("ca.crt"), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal CA key: %w", err)
	}
	return writePEM(p.path("ca.key"), "EC PRIVATE KEY", kb, 0o600)
}

func (p *PKI) issue(s certSpec) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("key for %s: %w", s.file, err)
	}
	sn, err := serial()
	if err != nil {
		return fmt.Errorf("serial for %s: %w", s.file, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     s.dns,
		IPAddresses:  s.ips,
	}
	if s.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", s.file, err)
	}
	if err := writePEM(p.Cert(s.file), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key %s: %w", s.file, err)
	}
	return writePEM(p.Key(s.file), "EC PRIVATE KEY", kb, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteKubeconfig writes a kubeconfig for the client certificate name that
// talks to the apiserver on the host bridge.
func (p *PKI) WriteKubeconfig(path, name string) error {
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: dhpp-e2e
  cluster:
    certificate-authority: %s
    server: https://%s:%d
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: dhpp-e2e
  context:
    cluster: dhpp-e2e
    user: %s
current-context: dhpp-e2e
`, p.CA(), BridgeIP, APIServerPort, name, p.Cert(name), p.Key(name), name)
	if err := writeFileAtomic(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic replaces path with data through a temporary file and a
// rename, so a daemon starting meanwhile reads the old file or the new
// one, never a truncated one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename: already gone
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
