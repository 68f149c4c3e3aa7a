// Command istio-mesh-check checks the meshConfig of Helm values files for
// Istio's istiod chart (deploy/istio/) against Istio's own MeshConfig
// message, built from the istio.io/api module, for tollgate's tests.
//
// The check is strict: an unknown or misspelt field, or a value of the
// wrong type, fails naming it. Istio itself reads mesh configuration
// leniently, so a typo there is silently ignored (an extension provider
// without its timeout falls back to 600 s).
//
// Usage: istio-mesh-check FILE...   prints each file's extensionProviders
// as JSON (one line per file) and exits 1 on the first problem.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: istio-mesh-check FILE...")
		os.Exit(2)
	}
	for _, path := range os.Args[1:] {
		providers, err := check(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(1)
		}
		fmt.Println(providers)
	}
}

func check(path string) (string, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	document, err := yaml.YAMLToJSON(text)
	if err != nil {
		return "", fmt.Errorf("not YAML: %w", err)
	}
	var values map[string]json.RawMessage
	if err := json.Unmarshal(document, &values); err != nil {
		return "", fmt.Errorf("not a map of values: %w", err)
	}
	raw, ok := values["meshConfig"]
	if !ok {
		return "", fmt.Errorf("no meshConfig")
	}
	var mesh meshv1alpha1.MeshConfig
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw, &mesh); err != nil {
		return "", fmt.Errorf("meshConfig: %w", err)
	}
	var providers []json.RawMessage
	for _, provider := range mesh.GetExtensionProviders() {
		encoded, err := protojson.Marshal(provider)
		if err != nil {
			return "", err
		}
		providers = append(providers, encoded)
	}
	out, err := json.Marshal(providers)
	return string(out), err
}
