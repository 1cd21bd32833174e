package fuse

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// What the 6.18 kernel offers here (flags and flags2 from its INIT, with
// io_uring off).
const kernelOffer = 0x5fd73fffffb

func TestNegotiate(t *testing.T) {
	st, err := Negotiate(InitIn{Major: 7, Minor: 45, MaxReadahead: 128 << 10, Flags: kernelOffer}, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := InitState{Minor: 45, KernelMinor: 45, KernelFlags: kernelOffer,
		Flags:        FlagAsyncRead | FlagBigWrites | FlagAsyncDIO | FlagParallelDirops | FlagMaxPages,
		MaxReadahead: 128 << 10, MaxWrite: 1 << 20, MaxPages: 256, MaxBackground: 64,
		CongestionThreshold: 48, TimeGran: 1}
	if st != want {
		t.Errorf("Negotiate =\n %+v\nwant\n %+v", st, want)
	}
	if !st.CanResend() {
		t.Error("7.45 kernel: CanResend false")
	}
	if err := st.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if st.MaxPayload() != 1<<20 {
		t.Errorf("MaxPayload %d", st.MaxPayload())
	}
}

func TestNegotiateOptions(t *testing.T) {
	in := InitIn{Major: 7, Minor: 45, Flags: kernelOffer}
	st, err := Negotiate(in, InitOptions{MaxWrite: 300 << 10, MaxBackground: 100, RequestTimeout: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st.MaxWrite != 300<<10 || st.MaxPages != 75 || st.MaxBackground != 100 || st.CongestionThreshold != 75 {
		t.Errorf("limits %+v", st)
	}
	// The timeout needs flags2, hence INIT_EXT.
	if st.RequestTimeout != 2 || st.Flags&FlagRequestTimeout == 0 || st.Flags&FlagInitExt == 0 {
		t.Errorf("timeout %d, flags %#x", st.RequestTimeout, st.Flags)
	}
	for _, mw := range []int{-1, 100, 5 << 20} {
		st, _ := Negotiate(in, InitOptions{MaxWrite: mw})
		if st.MaxWrite%4096 != 0 || st.MaxWrite < 4096 || st.MaxWrite > MaxMaxWrite {
			t.Errorf("MaxWrite %d -> %d", mw, st.MaxWrite)
		}
	}
}

func TestNegotiateOldKernel(t *testing.T) {
	// 7.31: no flags2, no resend, no request timeout.
	in := InitIn{Major: 7, Minor: 31, Flags: FlagAsyncDIO | FlagMaxPages | FlagBigWrites}
	st, err := Negotiate(in, InitOptions{})
	if err != nil || st.Minor != 31 || st.CanResend() || st.Flags&FlagInitExt != 0 {
		t.Errorf("Negotiate = %+v, %v", st, err)
	}
	if _, err := Negotiate(in, InitOptions{RequestTimeout: time.Minute}); !errors.Is(err, ErrProtocol) {
		t.Errorf("timeout on 7.31: %v; want ErrProtocol", err)
	}
	for _, in := range []InitIn{{Major: 7, Minor: 27}, {Major: 8, Minor: 45}} {
		if _, err := Negotiate(in, InitOptions{}); !errors.Is(err, ErrProtocol) {
			t.Errorf("%d.%d: %v; want ErrProtocol", in.Major, in.Minor, err)
		}
	}
}

func TestInitStateJSON(t *testing.T) {
	st, err := Negotiate(InitIn{Major: 7, Minor: 45, Flags: kernelOffer}, InitOptions{RequestTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var got InitState
	if err := json.Unmarshal(b, &got); err != nil || got != st {
		t.Fatalf("round trip %s -> %+v, %v", b, got, err)
	}
}

func TestInitStateValidate(t *testing.T) {
	good, _ := Negotiate(InitIn{Major: 7, Minor: 45, Flags: kernelOffer}, InitOptions{})
	bad := map[string]func(*InitState){
		"minor too old":      func(s *InitState) { s.Minor = 20 },
		"minor too new":      func(s *InitState) { s.Minor = OurMinor + 1 },
		"kernel below":       func(s *InitState) { s.KernelMinor = 30; s.Minor = 31 },
		"flags not offered":  func(s *InitState) { s.Flags |= 1 << 63 },
		"max_write zero":     func(s *InitState) { s.MaxWrite = 0 },
		"max_write too big":  func(s *InitState) { s.MaxWrite = 64 << 20 },
		"max_pages zero":     func(s *InitState) { s.MaxPages = 0 },
		"max_pages too many": func(s *InitState) { s.MaxPages = 4096 },
		"io_uring":           func(s *InitState) { s.KernelFlags |= FlagOverIOUring; s.Flags |= FlagOverIOUring },
	}
	for name, mutate := range bad {
		st := good
		mutate(&st)
		if err := st.Validate(); !errors.Is(err, ErrInvalidState) {
			t.Errorf("%s: Validate = %v; want ErrInvalidState", name, err)
		}
	}
}

func TestEncodeInitOut(t *testing.T) {
	st, _ := Negotiate(InitIn{Major: 7, Minor: 45, Flags: kernelOffer}, InitOptions{RequestTimeout: 20 * time.Second})
	b := make([]byte, initOutSize)
	encodeInitOut(b, &st)
	flags := uint64(le.Uint32(b[12:])) | uint64(le.Uint32(b[32:]))<<32
	if le.Uint32(b[0:]) != 7 || le.Uint32(b[4:]) != 45 || flags != st.Flags ||
		le.Uint16(b[16:]) != 64 || le.Uint32(b[20:]) != 1<<20 || le.Uint16(b[28:]) != 256 || le.Uint16(b[40:]) != 20 {
		t.Errorf("init_out % x", b)
	}
}
