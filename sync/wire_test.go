package sync

import (
	"bytes"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
	"github.com/systemimager/sim/store/storetest"
)

// FuzzDecode: no input makes Decode panic, and nothing that does not
// match its id enters a store through a Sink (store.Check re-hashes
// every blob stored).
func FuzzDecode(f *testing.F) {
	var b bytes.Buffer
	enc, _ := NewEncoder(&b)
	enc.Blob(store.TypeData, chunk.Sum([]byte("hello")), []byte("hello"))
	enc.CompressFrame([]FrameEntry{{Type: store.TypeTree, ID: chunk.Sum([]byte("t"))}}, [][]byte{[]byte("t")})
	enc.Commit(chunk.Sum([]byte("{}")), []byte("{}"))
	enc.Close()
	f.Add(b.Bytes())
	// The same stream with a blob that lies about its id.
	var lie bytes.Buffer
	enc, _ = NewEncoder(&lie)
	enc.Blob(store.TypeData, chunk.Sum([]byte("hello")), []byte("HELLO"))
	enc.CompressFrame([]FrameEntry{{Type: store.TypeData, ID: chunk.Sum([]byte("a"))}}, [][]byte{[]byte("b")})
	enc.Close()
	f.Add(lie.Bytes())
	st := storetest.New(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		sink := NewSink(st)
		Decode(bytes.NewReader(in), sink)
		if _, err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := st.Check(true, func(p store.Problem) {
			if !p.Warning {
				t.Fatalf("store damaged after decoding %q: %s", in, p)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestSinkRefusesLies: a blob, a frame or a commit whose bytes do not
// hash to its id is refused with an error naming it, and not stored.
func TestSinkRefusesLies(t *testing.T) {
	st := storetest.New(t)
	sink := NewSink(st)
	good, bad := []byte("good"), []byte("bad!")
	id := chunk.Sum(good)
	if err := sink.Blob(store.TypeData, id, bad); err == nil {
		t.Error("a blob that does not match its id was taken")
	}
	enc, _ := NewEncoder(&bytes.Buffer{})
	comp, payload, ents, ulen := BuildFrame(enc.enc, []FrameEntry{{Type: store.TypeData, ID: id}}, [][]byte{bad})
	if err := sink.Frame(comp, ulen, payload, ents); err == nil {
		t.Error("a frame whose blob does not match its id was taken")
	}
	if err := sink.Commit(chunk.Sum([]byte("{}")), []byte("{ }")); err == nil {
		t.Error("a commit that does not match its id was taken")
	}
	if err := sink.Blob(store.TypeData, id, good); err != nil {
		t.Fatal(err)
	}
	s, err := sink.Close()
	if err != nil || s.Blobs != 1 || s.New != 1 {
		t.Fatalf("close: %+v, %v; want 1 blob, new", s, err)
	}
	if got, err := st.Get(id); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("stored %q, %v", got, err)
	}
}
