// Command weightgen-go materialises a batch from a weightgen server, reassembles each tensor from its
// chunks, verifies each digest and prints one line per variable:
//
//	name<TAB>shape<TAB>dtype<TAB>byte_size<TAB>digest (hex, of --digest: sha256 by default; "-" for none)
//
// Usage: weightgen-go [--server HOST:PORT] [--timeout SECONDS] [--digest sha256|xxh3_128|none] REQUEST.json
//
// REQUEST.json is a MaterializeRequest in protobuf's JSON form. On a gRPC error it prints
// "error: CODE message" to stderr and exits 1; on a bad stream (a digest mismatch, a gap), exits 2.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/golang/protobuf/jsonpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	wg "weightgen/v1"
)

// codeNames are gRPC's canonical status code names, indexed by code.
var codeNames = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

func codeName(err error) (string, string) {
	st, _ := status.FromError(err)
	if c := int(st.Code()); c < len(codeNames) {
		return codeNames[c], st.Message()
	}
	return fmt.Sprintf("CODE_%d", st.Code()), st.Message()
}

func readRequest(path string) (*wg.MaterializeRequest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	req := &wg.MaterializeRequest{}
	if err := jsonpb.Unmarshal(f, req); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return req, nil
}

func run() int {
	server := flag.String("server", "127.0.0.1:50051", "weightgen server address, HOST:PORT")
	timeout := flag.Int("timeout", 120, "deadline for the whole call, in seconds")
	digest := flag.String("digest", "", "digest to ask for and verify: sha256, xxh3_128 or none (default: the request's, else sha256)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(),
			"usage: %s [--server HOST:PORT] [--timeout SECONDS] [--digest sha256|xxh3_128|none] REQUEST.json\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	algorithm, known := wg.DigestAlgorithm_value["DIGEST_ALGORITHM_"+strings.ToUpper(*digest)]
	if flag.NArg() != 1 || *timeout <= 0 || (*digest != "" && (!known || algorithm == 0)) {
		flag.Usage()
		return 2
	}
	req, err := readRequest(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	if *digest != "" {
		req.DigestAlgorithm = wg.DigestAlgorithm(algorithm)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeout)*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, *server, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	defer conn.Close()

	stream, err := wg.NewWeightGenClient(conn).Materialize(ctx, req)
	if err == nil {
		asm := NewAssembler(len(req.GetVariables()))
		for {
			var chunk *wg.TensorChunk
			chunk, err = stream.Recv()
			if err == io.EOF {
				lines, lerr := asm.Lines()
				if lerr != nil {
					fmt.Fprintln(os.Stderr, "error:", lerr)
					return 2
				}
				for _, line := range lines {
					fmt.Println(line)
				}
				return 0
			}
			if err != nil {
				break
			}
			if aerr := asm.Add(chunk); aerr != nil {
				fmt.Fprintln(os.Stderr, "error:", aerr)
				return 2
			}
		}
	}
	code, msg := codeName(err)
	fmt.Fprintf(os.Stderr, "error: %s %s\n", code, msg)
	return 1
}

func main() {
	os.Exit(run())
}
